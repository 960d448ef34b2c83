package offheap

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mapping is one mmap'd range. B aliases the whole mapping.
type Mapping struct {
	B []byte
}

// Addr returns the start address of the mapping.
func (m *Mapping) Addr() uintptr {
	if len(m.B) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(&m.B[0]))
}

// Len returns the mapping length in bytes.
func (m *Mapping) Len() int { return len(m.B) }

// Unmap releases the mapping. It is safe to call on a nil or empty mapping
// and idempotent.
func (m *Mapping) Unmap() error {
	if m == nil || m.B == nil {
		return nil
	}
	err := unix.Munmap(m.B)
	m.B = nil
	return err
}

// Anon maps size bytes of private anonymous memory with extra mmap flags
// (for example unix.MAP_NORESERVE).
func Anon(size int, prot, extraFlags int) (*Mapping, error) {
	if size <= 0 {
		return nil, fmt.Errorf("anonymous mapping of %d bytes", size)
	}
	b, err := unix.Mmap(-1, 0, size, prot, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|extraFlags)
	if err != nil {
		return nil, fmt.Errorf("mmap anonymous %d bytes: %w", size, err)
	}
	return &Mapping{B: b}, nil
}

// File maps length bytes of f starting at off with the given protection and
// flags (unix.MAP_SHARED or unix.MAP_PRIVATE plus extras).
func File(f *os.File, off int64, length int, prot, flags int) (*Mapping, error) {
	if length <= 0 {
		return nil, fmt.Errorf("mapping of %d bytes of %s", length, f.Name())
	}
	b, err := unix.Mmap(int(f.Fd()), off, length, prot, flags)
	if err != nil {
		return nil, fmt.Errorf("mmap %s [%d,+%d): %w", f.Name(), off, length, err)
	}
	return &Mapping{B: b}, nil
}

// OpenFileRO maps a whole file read-only and shared (page cache backed).
// The returned mapping is nil for an empty file.
func OpenFileRO(path string) (*Mapping, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if st.Size() == 0 {
		return &Mapping{}, 0, nil
	}
	m, err := File(f, 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, 0, err
	}
	return m, st.Size(), nil
}

// AddrOf returns the address of b[0]; b must be non-empty and off-heap.
func AddrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// At returns a slice of n bytes at address addr. The caller guarantees the
// range is mapped for the lifetime of the slice.
func At(addr uintptr, n int) []byte {
	// The address is off-heap by contract, so the GC need not know it; the
	// double indirection converts it without a uintptr→Pointer conversion.
	p := *(*unsafe.Pointer)(unsafe.Pointer(&addr))
	return unsafe.Slice((*byte)(p), n)
}
