package cxl

import (
	"fmt"
	"os"
	"sync"
)

// Caps lists the cache-maintenance instructions the CPU offers (CPUID leaf 1
// EDX[19], leaf 7/0 EBX[23], EBX[24], ECX[27], ECX[28]).
type Caps struct {
	CLFLUSH, CLFLUSHOPT, CLWB bool
	MOVDIRI, MOVDIR64B        bool
}

// Primitives names the instructions chosen for Flush and Invalidate.
type Primitives struct {
	Caps       Caps
	Flush      string // "clwb", "clflushopt", "clflush" or "none"
	Invalidate string // "clflushopt", "clflush" or "none"
}

func (p Primitives) String() string {
	return fmt.Sprintf("flush=%s invalidate=%s fence=sfence full-fence=mfence (cpu: clflush=%v clflushopt=%v clwb=%v movdir64b=%v)",
		p.Flush, p.Invalidate, p.Caps.CLFLUSH, p.Caps.CLFLUSHOPT, p.Caps.CLWB, p.Caps.MOVDIR64B)
}

type lineFunc func(addr uintptr, lines int64)

func noLines(uintptr, int64) {}

var (
	primOnce       sync.Once
	prims          Primitives
	flushImpl      lineFunc
	invalidateImpl lineFunc
)

// ForceEnv, when set to "clflushopt" or "clflush" in the environment, makes
// the process use that instruction even when CLWB exists (to measure or test
// the fallbacks).
const ForceEnv = "AQUIFER_CXL_FLUSH"

func initPrims() {
	primOnce.Do(func() {
		c := detect()
		f, i, fn, in := pickFlush(c, os.Getenv(ForceEnv))
		flushImpl, invalidateImpl = f, i
		prims = Primitives{Caps: c, Flush: fn, Invalidate: in}
	})
}

// Detect returns the CPU's capabilities and the instructions this process
// uses: CLWB, else CLFLUSHOPT, else CLFLUSH for write-back; CLFLUSHOPT, else
// CLFLUSH for invalidation.
func Detect() Primitives {
	initPrims()
	return prims
}

// FlushLines writes back the lines covering [addr, addr+n) of mapped memory.
// addr must point into an off-heap mapping that stays mapped during the call.
func FlushLines(addr uintptr, n int64) {
	initPrims()
	start, lines := LineSpan(int64(addr), n)
	flushImpl(uintptr(start), lines)
}

// InvalidateLines evicts the lines covering [addr, addr+n) from this CPU's
// caches. Same address rules as FlushLines.
func InvalidateLines(addr uintptr, n int64) {
	initPrims()
	start, lines := LineSpan(int64(addr), n)
	invalidateImpl(uintptr(start), lines)
}

// SFence executes SFENCE: earlier flushes complete before later stores.
func SFence() { sfence() }

// MFence executes MFENCE: earlier flushes and invalidations complete before
// later loads and stores.
func MFence() { mfence() }
