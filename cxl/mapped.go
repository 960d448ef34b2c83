package cxl

import (
	"fmt"
	"unsafe"

	"github.com/aquifer-pool/aquifer/offheap"
)

// Mapped is a Region over real mapped memory (a devdax device or a shared
// file). Loads and stores are plain CPU accesses; Flush, Invalidate and the
// fences execute the instructions chosen by [Detect].
//
// The mapping is normally PROT_READ except for the writable windows the
// owner requested: a stray store to a line this host does not own then
// faults instead of silently becoming a dirty line that would overwrite the
// owner's data on eviction (invariant 4 in docs/coherence.md).
type Mapped struct {
	b       []byte
	base    uintptr
	align   int64
	windows []Window
	closeFn func() error
}

// Window is a writable byte range of a region.
type Window struct{ Off, Len int64 }

// NewMapped wraps the off-heap mapping b. align is the mapping granularity;
// windows are the ranges that were mapped writable; closeFn releases the
// mapping (and any file) on Close.
func NewMapped(b []byte, align int64, windows []Window, closeFn func() error) *Mapped {
	return &Mapped{b: b, base: offheap.AddrOf(b), align: align, windows: windows, closeFn: closeFn}
}

func (m *Mapped) Size() int64  { return int64(len(m.b)) }
func (m *Mapped) Align() int64 { return m.align }

// Bytes returns the whole mapping (read-only outside the writable windows).
func (m *Mapped) Bytes() []byte { return m.b }

// Addr returns the virtual address of offset off.
func (m *Mapped) Addr(off int64) uintptr {
	CheckRange(int64(len(m.b)), off, 0)
	return m.base + uintptr(off)
}

func (m *Mapped) Writable(off, n int64) bool {
	for _, w := range m.windows {
		if off >= w.Off && off+n <= w.Off+w.Len {
			return true
		}
	}
	return false
}

func (m *Mapped) ReadAt(dst []byte, off int64) {
	CheckRange(int64(len(m.b)), off, int64(len(dst)))
	copy(dst, m.b[off:])
}

func (m *Mapped) WriteAt(src []byte, off int64) {
	m.mustWrite(off, int64(len(src)))
	copy(m.b[off:], src)
}

func (m *Mapped) Load64(off int64) uint64 {
	m.word(off)
	// A single aligned MOVQ: atomic for 8 bytes on x86, no LOCK prefix.
	return *(*uint64)(unsafe.Pointer(&m.b[off]))
}

func (m *Mapped) Store64(off int64, v uint64) {
	m.word(off)
	m.mustWrite(off, 8)
	*(*uint64)(unsafe.Pointer(&m.b[off])) = v
}

func (m *Mapped) Flush(off, n int64) {
	CheckRange(int64(len(m.b)), off, n)
	FlushLines(m.base+uintptr(off), n)
}

func (m *Mapped) Invalidate(off, n int64) {
	CheckRange(int64(len(m.b)), off, n)
	InvalidateLines(m.base+uintptr(off), n)
}

func (m *Mapped) Fence()     { sfence() }
func (m *Mapped) FullFence() { mfence() }

func (m *Mapped) Close() error {
	if m.closeFn == nil {
		return nil
	}
	f := m.closeFn
	m.closeFn = nil
	m.b = nil
	return f()
}

func (m *Mapped) word(off int64) {
	CheckRange(int64(len(m.b)), off, 8)
	if off%8 != 0 {
		panic(fmt.Sprintf("cxl: unaligned 8-byte access at %d", off))
	}
}

func (m *Mapped) mustWrite(off, n int64) {
	CheckRange(int64(len(m.b)), off, n)
	if !m.Writable(off, n) {
		panic(fmt.Sprintf("cxl: store to [%d, +%d) outside this host's writable windows", off, n))
	}
}
