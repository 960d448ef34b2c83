package handler

import (
	"fmt"

	"github.com/aquifer-pool/aquifer/offheap"
)

// Source yields snapshot page content for faults.
type Source interface {
	// Page prepares the content of the page of ps bytes at memory-file
	// offset off for a demand fault: either the address of its bytes in
	// this process, off the Go heap (the UFFDIO_COPY source), or zero=true
	// for a page that is all zeros (UFFDIO_ZEROPAGE). done, if non-nil, is
	// called once the page is installed (or the install failed); a source
	// uses it to release a buffer or to schedule neighbours.
	Page(off, ps uint64) (addr uintptr, zero bool, done func(), err error)
	// Size is the memory file size in bytes.
	Size() int64
}

// MemFile is a raw Firecracker memory file mapped read-only and shared, so
// its pages come from the page cache and UFFDIO_COPY reads them directly.
type MemFile struct {
	m    *offheap.Mapping
	size int64
}

// OpenMemFile maps path.
func OpenMemFile(path string) (*MemFile, error) {
	m, size, err := offheap.OpenFileRO(path)
	if err != nil {
		return nil, fmt.Errorf("memory file: %w", err)
	}
	if size == 0 {
		return nil, fmt.Errorf("memory file %s is empty", path)
	}
	return &MemFile{m: m, size: size}, nil
}

// Page implements Source: every page comes from the mapped file.
func (f *MemFile) Page(off, ps uint64) (uintptr, bool, func(), error) {
	a, err := f.Addr(off, ps)
	return a, false, nil, err
}

// Addr returns the address of n bytes of the file at offset off.
func (f *MemFile) Addr(off, n uint64) (uintptr, error) {
	if off+n > uint64(f.size) || off+n < off {
		return 0, fmt.Errorf("range [%d,+%d) outside the %d-byte memory file", off, n, f.size)
	}
	return f.m.Addr() + uintptr(off), nil
}

// Size implements Source.
func (f *MemFile) Size() int64 { return f.size }

// Bytes returns the mapped file content.
func (f *MemFile) Bytes() []byte { return f.m.B }

// Close unmaps the file.
func (f *MemFile) Close() error { return f.m.Unmap() }
