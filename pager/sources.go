package pager

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
	// are valid and stable only until fn returns.
	With(ctx context.Context, fn func(seg []byte) error) error
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
	arenas []*offheap.Mapping
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
func (s *ReaderAtSource) With(ctx context.Context, fn func(seg []byte) error) error {
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
			return fmt.Errorf("pager: reading hot segment: %w", err)
		}
		s.hot = m
	}
	seg := s.hot.B
	s.mu.Unlock()
	return fn(seg)
}

// Read implements ColdSource.
func (s *ReaderAtSource) Read(ctx context.Context, off uint64, dst []byte, prefetch bool) error {
	if int64(off)+int64(len(dst)) > s.Len {
		return fmt.Errorf("pager: cold read [%d,+%d) beyond the %d-byte segment", off, len(dst), s.Len)
	}
	_, err := s.R.ReadAt(dst, s.Off+int64(off))
	if err == io.EOF {
		err = nil
	}
	return err
}

// Arena implements ColdSource: arenas are recycled across sessions.
func (s *ReaderAtSource) Arena(n int) ([]byte, func() error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, m := range s.arenas {
		if m.Len() == n {
			s.arenas = append(s.arenas[:i], s.arenas[i+1:]...)
			return m.B, s.recycle(m), nil
		}
	}
	if n == 0 {
		return nil, func() error { return nil }, nil
	}
	m, err := offheap.Anon(n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		return nil, nil, err
	}
	return m.B, s.recycle(m), nil
}

func (s *ReaderAtSource) recycle(m *offheap.Mapping) func() error {
	return func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.arenas) >= 64 {
			return m.Unmap()
		}
		s.arenas = append(s.arenas, m)
		return nil
	}
}
