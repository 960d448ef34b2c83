package cxl

import "fmt"

// LineSize is the cache-line size assumed by the protocol: the unit of
// write-back, of CLWB/CLFLUSHOPT and of CXL.mem transfers. A line must never
// be written by two hosts (invariant 1 in docs/coherence.md).
const LineSize = 64

// Region is one host's view of pod-shared memory. Offsets are byte offsets
// from the start of the region. Implementations panic on out-of-range
// offsets: callers (package cxl/pod) validate every offset read from shared
// memory before using it, so an out-of-range access is a programming error.
//
// A Region is used by one goroutine at a time unless the implementation says
// otherwise; concurrency between hosts is the whole point, concurrency inside
// one host's view is not needed by the protocol.
type Region interface {
	// Size returns the region length in bytes.
	Size() int64
	// Align returns the granularity at which the region can be mapped and
	// protected (4 KiB for shm, the sysfs align for devdax, LineSize for
	// the simulator). Per-host writable windows are multiples of it.
	Align() int64
	// Writable reports whether [off, off+n) may be stored to by this host.
	Writable(off, n int64) bool

	// ReadAt copies len(dst) bytes at off into dst through the cache.
	ReadAt(dst []byte, off int64)
	// WriteAt copies src to off through the cache (the lines become dirty
	// in this host's cache and reach the device only after Flush+Fence, or
	// at the whim of eviction).
	WriteAt(src []byte, off int64)
	// Load64 loads the aligned little-endian word at off.
	Load64(off int64) uint64
	// Store64 stores the aligned little-endian word at off.
	Store64(off int64, v uint64)

	// Flush starts writing back the lines covering [off, off+n). The
	// write-back is only guaranteed complete after Fence or FullFence.
	Flush(off, n int64)
	// Invalidate starts evicting the lines covering [off, off+n) from this
	// host's cache (writing back dirty ones). Loads issued before a
	// FullFence may still hit the old lines.
	Invalidate(off, n int64)
	// Fence waits for earlier flushes to complete before later stores
	// (SFENCE).
	Fence()
	// FullFence waits for earlier flushes and invalidations to complete
	// before later loads and stores (MFENCE).
	FullFence()

	// Close releases the host's mapping. It does not destroy shared
	// contents.
	Close() error
}

// Addresser is implemented by regions backed by real mapped memory. Addr
// returns the virtual address of offset off, for zero-copy consumers such as
// UFFDIO_COPY. The simulator does not implement it.
type Addresser interface {
	Addr(off int64) uintptr
}

// CheckRange panics with a descriptive message unless [off, off+n) lies
// inside a region of the given size. Implementations call it on every access.
func CheckRange(size, off, n int64) {
	if off < 0 || n < 0 || off > size || n > size-off {
		panic(fmt.Sprintf("cxl: access [%d, +%d) outside region of %d bytes", off, n, size))
	}
}

// LineSpan returns the first line-aligned offset and the number of lines
// covering [off, off+n).
func LineSpan(off, n int64) (start int64, lines int64) {
	if n <= 0 {
		return off &^ (LineSize - 1), 0
	}
	start = off &^ (LineSize - 1)
	end := (off + n + LineSize - 1) &^ (LineSize - 1)
	return start, (end - start) / LineSize
}
