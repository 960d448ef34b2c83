package cxl

func cpuid(leaf, sub uint32) (a, b, c, d uint32)

//go:noescape
func clwbLines(addr uintptr, lines int64)

//go:noescape
func clflushoptLines(addr uintptr, lines int64)

//go:noescape
func clflushLines(addr uintptr, lines int64)

func sfence()
func mfence()

func detect() Caps {
	var c Caps
	maxLeaf, _, _, _ := cpuid(0, 0)
	_, _, _, edx1 := cpuid(1, 0)
	c.CLFLUSH = edx1&(1<<19) != 0
	if maxLeaf >= 7 {
		_, ebx7, ecx7, _ := cpuid(7, 0)
		c.CLFLUSHOPT = ebx7&(1<<23) != 0
		c.CLWB = ebx7&(1<<24) != 0
		c.MOVDIRI = ecx7&(1<<27) != 0
		c.MOVDIR64B = ecx7&(1<<28) != 0
	}
	return c
}

func pickFlush(c Caps, force string) (flushFn, invalFn lineFunc, fname, iname string) {
	switch {
	case force == "clflush" || (!c.CLWB && !c.CLFLUSHOPT):
		if !c.CLFLUSH {
			return noLines, noLines, "none", "none"
		}
		return clflushLines, clflushLines, "clflush", "clflush"
	case force == "clflushopt" || !c.CLWB:
		if !c.CLFLUSHOPT {
			return clflushLines, clflushLines, "clflush", "clflush"
		}
		return clflushoptLines, clflushoptLines, "clflushopt", "clflushopt"
	}
	inv, iname := lineFunc(clflushoptLines), "clflushopt"
	if !c.CLFLUSHOPT {
		inv, iname = clflushLines, "clflush"
	}
	return clwbLines, inv, "clwb", iname
}
