package wset

import (
	"fmt"
	"time"
)

// Kind says how a page was first touched. Several bits may be set when a
// trace records the first read, write and execute of a page separately and
// they are folded into one record.
type Kind uint8

const (
	Read  Kind = 1 << 0
	Write Kind = 1 << 1
	Exec  Kind = 1 << 2
)

func (k Kind) String() string {
	s := ""
	if k&Read != 0 {
		s += "r"
	}
	if k&Write != 0 {
		s += "w"
	}
	if k&Exec != 0 {
		s += "x"
	}
	if s == "" {
		return "-"
	}
	return s
}

// Access is one touch of one guest page.
type Access struct {
	// Page is the page index in the memory file (offset / PageSize).
	Page uint64
	// T is the time since the first access of the trace. For captured
	// traces it is calibrated native time (see docs/corpus.md).
	T time.Duration
	// Insn is the guest instruction count at the access when known (captured
	// traces), else 0.
	Insn uint64
	// Kind is read, write or execute.
	Kind Kind
	// CPU is the vCPU that made the access.
	CPU uint8
}

// Trace is an ordered list of accesses to one memory image.
type Trace struct {
	// PageSize is the guest page size in bytes (4096 unless hugepages).
	PageSize uint32
	// MemSize is the size of the memory file the trace refers to, in bytes.
	MemSize uint64
	// Memory is the fingerprint of the snapshot memory the trace was
	// recorded from (its Size is MemSize), or nil when the trace is
	// unbound (written before format version 2, or by a tool that did not
	// know the memory). See Bind and CheckMemory.
	Memory *Fingerprint
	// Source is a free-form description (function name, input, tool).
	Source string
	// Accesses in order of time.
	Accesses []Access
}

// Validate checks internal consistency: page size, the memory fingerprint's
// size is the memory size, pages inside the memory size, kinds non-empty,
// times non-decreasing.
func (t *Trace) Validate() error {
	if t.PageSize != 4096 && t.PageSize != 2<<20 {
		return fmt.Errorf("page size %d is neither 4 KiB nor 2 MiB", t.PageSize)
	}
	if t.Memory != nil && (t.Memory.Size == 0 || t.Memory.Size != t.MemSize) {
		return fmt.Errorf("bound to a memory of %d bytes, but the memory size is %d", t.Memory.Size, t.MemSize)
	}
	pages := (t.MemSize + uint64(t.PageSize) - 1) / uint64(t.PageSize)
	var last time.Duration
	for i, a := range t.Accesses {
		if t.MemSize != 0 && a.Page >= pages {
			return fmt.Errorf("access %d: page %d beyond memory of %d pages", i, a.Page, pages)
		}
		if a.Kind == 0 || a.Kind&^(Read|Write|Exec) != 0 {
			return fmt.Errorf("access %d: invalid kind %#x", i, uint8(a.Kind))
		}
		if a.T < last {
			return fmt.Errorf("access %d: time %v before previous %v", i, a.T, last)
		}
		last = a.T
	}
	return nil
}

// FirstTouches returns the first access of every distinct page, in order,
// with the kinds of all later accesses of that page folded in (a page read
// first and written later is reported as read|write at its first time).
func (t *Trace) FirstTouches() []Access {
	idx := make(map[uint64]int, len(t.Accesses))
	out := make([]Access, 0, len(t.Accesses))
	for _, a := range t.Accesses {
		if i, ok := idx[a.Page]; ok {
			out[i].Kind |= a.Kind
			continue
		}
		idx[a.Page] = len(out)
		out = append(out, a)
	}
	return out
}
