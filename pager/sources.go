package pager

import (
	"context"
	"fmt"
	"io"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/snapimage"
	"golang.org/x/sys/unix"
)

// HotSource yields a snapshot's hot segment.
type HotSource interface {
	// Acquire returns the whole hot segment as off-heap bytes, read under
	// the tier's consistency rules, and a function that re-validates the
	// source after the caller copied from it (for CXL: the descriptor's
	// generation is unchanged) and releases it.
	Acquire(ctx context.Context) (seg []byte, release func() error, err error)
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
// local disk, or a test fixture).
type ReaderAtSource struct {
	R    io.ReaderAt
	Off  int64
	Len  int64
	Kind string
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

// Acquire implements HotSource: the segment is read into a private buffer.
func (s *ReaderAtSource) Acquire(ctx context.Context) ([]byte, func() error, error) {
	if s.Len == 0 {
		return nil, func() error { return nil }, nil
	}
	m, err := offheap.Anon(int(s.Len), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		return nil, nil, err
	}
	if _, err := s.R.ReadAt(m.B, s.Off); err != nil && err != io.EOF {
		m.Unmap()
		return nil, nil, fmt.Errorf("pager: reading hot segment: %w", err)
	}
	return m.B, m.Unmap, nil
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

// Arena implements ColdSource.
func (s *ReaderAtSource) Arena(n int) ([]byte, func() error, error) { return anonArena(n) }

func anonArena(n int) ([]byte, func() error, error) {
	if n == 0 {
		return nil, func() error { return nil }, nil
	}
	m, err := offheap.Anon(n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		return nil, nil, err
	}
	return m.B, m.Unmap, nil
}
