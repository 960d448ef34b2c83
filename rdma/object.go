package rdma

import (
	"context"
	"errors"
	"fmt"

	"github.com/aquifer-pool/aquifer/offheap"
	"golang.org/x/sys/unix"
)

// Object is a byte range larger than one segment (a snapshot's whole cold
// segment), stored as consecutive segments of ChunkPages pages each.
type Object struct {
	PageSize   int
	ChunkPages int
	Len        uint64
	Segs       []*SegmentInfo
}

// PublishObject stores data (a whole number of pages) as segments base,
// base+1, … of chunkPages pages each (0: 16 MiB worth).
func (c *Client) PublishObject(ctx context.Context, base SegmentID, pageSize int, data []byte, chunkPages int) (*Object, error) {
	if pageSize <= 0 || len(data) == 0 || len(data)%pageSize != 0 {
		return nil, fmt.Errorf("object of %d bytes is not a whole number of %d-byte pages", len(data), pageSize)
	}
	if chunkPages <= 0 {
		chunkPages = max(1, (16<<20)/pageSize)
	}
	o := &Object{PageSize: pageSize, ChunkPages: chunkPages, Len: uint64(len(data))}
	chunk := chunkPages * pageSize
	for i, lo := 0, 0; lo < len(data); i, lo = i+1, lo+chunk {
		s, err := c.Publish(ctx, base+SegmentID(i), pageSize, data[lo:min(lo+chunk, len(data))])
		if err != nil {
			return nil, err
		}
		o.Segs = append(o.Segs, s)
	}
	return o, nil
}

// ObjectSource serves an Object to the pager: it has the shape of the
// pager's ColdSource (Read, Arena, Name) without importing it.
type ObjectSource struct {
	C   *Client
	Obj *Object
}

// Name says where pages come from.
func (s *ObjectSource) Name() string { return "rdma/" + s.C.o.Transport.Name() }

// Arena maps n bytes off-heap and registers them as read destinations.
func (s *ObjectSource) Arena(n int) ([]byte, func() error, error) {
	m, err := offheap.Anon(n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		return nil, nil, err
	}
	reg, err := s.C.o.Transport.Register(m.B)
	if err != nil {
		m.Unmap()
		return nil, nil, err
	}
	return m.B, func() error { return errors.Join(reg.Release(), m.Unmap()) }, nil
}

// Read fills dst (page-aligned, inside an Arena) with the object's bytes at
// off: one batch, one round trip per segment touched, all segments in
// parallel. prefetch routes the read through the prefetch queue.
func (s *ObjectSource) Read(ctx context.Context, off uint64, dst []byte, prefetch bool) error {
	o := s.Obj
	ps := uint64(o.PageSize)
	if off%ps != 0 || uint64(len(dst))%ps != 0 || off+uint64(len(dst)) > o.Len {
		return fmt.Errorf("object read [%d,+%d) is not page-aligned inside %d bytes", off, len(dst), o.Len)
	}
	byChunk := map[int][]PageRead{}
	for k := uint64(0); k < uint64(len(dst))/ps; k++ {
		page := int((off / ps) + k)
		ci := page / o.ChunkPages
		byChunk[ci] = append(byChunk[ci], PageRead{Page: page % o.ChunkPages, Dst: dst[k*ps : (k+1)*ps]})
	}
	if len(byChunk) == 1 && !prefetch {
		// One chunk (a cold extent, as a rule): read on the calling
		// goroutine, which then polls for its own completion (await): no
		// goroutine to start and wake, each a scheduler hop that costs
		// milliseconds when 8 restores share 2 cores.
		for ci, reqs := range byChunk {
			return s.C.Read(ctx, o.Segs[ci], reqs)
		}
	}
	var ps2 []*Pending
	for ci, reqs := range byChunk {
		if prefetch {
			ps2 = append(ps2, s.C.Prefetch(o.Segs[ci], reqs))
		} else {
			ps2 = append(ps2, s.C.ReadAsync(ctx, o.Segs[ci], reqs))
		}
	}
	var errs []error
	for _, p := range ps2 {
		if err := p.Wait(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
