package restore

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/snapimage"
	"golang.org/x/sys/unix"
)

// HotSource yields a snapshot's hot segment.
type HotSource interface {
	// With validates the hot segment under the tier's consistency rules
	// and calls fn with its bytes (off-heap, so they can be the source of
	// UFFDIO_COPY directly: for CXL, the region's own mapping). The bytes
	// are valid and stable only until fn returns. fn checks every page
	// against the image's digests before it uses that page, so a source
	// need not hash the segment itself; fn failing with
	// snapimage.ErrDigest means the bytes were not the snapshot's (the
	// pages fn used before it found that were checked ones), and a source
	// whose tier can be read again (CXL: a stale read on a non-coherent
	// device) may retry and call fn again.
	With(ctx context.Context, fn func(seg Segment) error) error
	// Name says where the pages come from ("cxl", "rdma", "local").
	Name() string
}

// ColdSource reads a snapshot's cold segment.
type ColdSource interface {
	// Read fills dst (inside the arena returned by Arena) with the cold
	// segment bytes at off. prefetch marks low-priority reads.
	Read(ctx context.Context, off uint64, dst []byte, prefetch bool) error
	// Arena returns off-heap memory of n bytes registered for reads (an
	// RDMA memory region) and its release function.
	Arena(n int) ([]byte, func() error, error)
	Name() string
}

// Segment is a hot segment as a source hands it out: one or more off-heap
// pieces in hot-index order, each a whole number of pages. A segment that a
// tier stores in several extents (CXL chunks are smaller than the largest
// hot sets) stays in pieces; other sources give one piece.
type Segment [][]byte

// Len returns the segment's length in bytes.
func (s Segment) Len() int {
	n := 0
	for _, p := range s {
		n += len(p)
	}
	return n
}

// Page returns hot page i of ps bytes, or nil beyond the segment.
func (s Segment) Page(i, ps uint64) []byte {
	off := i * ps
	for _, p := range s {
		if off < uint64(len(p)) {
			if off+ps > uint64(len(p)) {
				return nil
			}
			return p[off : off+ps]
		}
		off -= uint64(len(p))
	}
	return nil
}

// Run returns the address of hot page i and how many of the n pages from i
// on follow it contiguously in memory (at least 1 inside the segment, 0
// beyond it).
func (s Segment) Run(i, n, ps uint64) (uintptr, uint64) {
	off := i * ps
	for _, p := range s {
		if off < uint64(len(p)) {
			k := min(n, (uint64(len(p))-off)/ps)
			return offheap.AddrOf(p) + uintptr(off), k
		}
		off -= uint64(len(p))
	}
	return 0, 0
}

// ReaderAtSource serves a segment from any io.ReaderAt (an image file on
// local disk, or a test fixture). As a hot source it reads the segment once
// into memory shared by every session (segments are immutable); as a cold
// source it recycles session arenas, because fresh memory is expensive to
// fault in (very much so on virtualised hosts).
type ReaderAtSource struct {
	R    io.ReaderAt
	Off  int64
	Len  int64
	Kind string

	mu     sync.Mutex
	hot    *offheap.Mapping
	arenas ArenaPool
}

// LocalSegments returns hot and cold sources that read an image file's
// segments directly.
func LocalSegments(img *snapimage.Image, r io.ReaderAt) (*ReaderAtSource, *ReaderAtSource) {
	h, c := img.Section(snapimage.SecHotSegment), img.Section(snapimage.SecColdSegment)
	return &ReaderAtSource{R: r, Off: int64(h.Offset), Len: int64(h.Length), Kind: "local"},
		&ReaderAtSource{R: r, Off: int64(c.Offset), Len: int64(c.Length), Kind: "local"}
}

// Name implements HotSource and ColdSource.
func (s *ReaderAtSource) Name() string { return s.Kind }

// With implements HotSource: the segment is read once and shared.
func (s *ReaderAtSource) With(ctx context.Context, fn func(seg Segment) error) error {
	if s.Len == 0 {
		return fn(nil)
	}
	s.mu.Lock()
	if s.hot == nil {
		m, err := offheap.Anon(int(s.Len), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_POPULATE)
		if err != nil {
			s.mu.Unlock()
			return err
		}
		if _, err := s.R.ReadAt(m.B, s.Off); err != nil && err != io.EOF {
			m.Unmap()
			s.mu.Unlock()
			return fmt.Errorf("reading the hot segment: %w", err)
		}
		s.hot = m
	}
	seg := s.hot.B
	s.mu.Unlock()
	return fn(Segment{seg})
}

// Read implements ColdSource.
func (s *ReaderAtSource) Read(ctx context.Context, off uint64, dst []byte, prefetch bool) error {
	if int64(off)+int64(len(dst)) > s.Len {
		return fmt.Errorf("cold read [%d,+%d) beyond the %d-byte segment", off, len(dst), s.Len)
	}
	_, err := s.R.ReadAt(dst, s.Off+int64(off))
	if err == io.EOF {
		err = nil
	}
	return err
}

// Arena implements ColdSource: arenas are recycled across sessions.
func (s *ReaderAtSource) Arena(n int) ([]byte, func() error, error) {
	return s.arenas.Get(n, func(n int) ([]byte, func() error, error) {
		m, err := offheap.Anon(n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
		if err != nil {
			return nil, nil, err
		}
		return m.B, m.Unmap, nil
	})
}

// ArenaPool recycles off-heap read arenas across sessions: a restore's
// cold arena is as large as the cold segment, and faulting fresh memory in
// is expensive (very much so on virtualised hosts). The zero value is
// ready to use.
type ArenaPool struct {
	mu   sync.Mutex
	free []pooledArena
}

type pooledArena struct {
	b       []byte
	release func() error
}

// maxPooledArenas bounds the arenas kept for reuse.
const maxPooledArenas = 64

// Get returns a free arena of n bytes, or a new one from alloc. Its
// release function returns it to the pool (or really releases it when the
// pool is full).
func (p *ArenaPool) Get(n int, alloc func(n int) ([]byte, func() error, error)) ([]byte, func() error, error) {
	if n == 0 {
		return nil, func() error { return nil }, nil
	}
	p.mu.Lock()
	for i, a := range p.free {
		if len(a.b) == n {
			p.free = append(p.free[:i], p.free[i+1:]...)
			p.mu.Unlock()
			return a.b, p.put(a), nil
		}
	}
	p.mu.Unlock()
	b, rel, err := alloc(n)
	if err != nil {
		return nil, nil, err
	}
	return b, p.put(pooledArena{b, rel}), nil
}

func (p *ArenaPool) put(a pooledArena) func() error {
	return func() error {
		p.mu.Lock()
		if len(p.free) < maxPooledArenas {
			p.free = append(p.free, a)
			p.mu.Unlock()
			return nil
		}
		p.mu.Unlock()
		return a.release()
	}
}
