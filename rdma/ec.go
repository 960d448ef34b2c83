package rdma

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/reedsolomon"
	"golang.org/x/sys/unix"
)

// Reed–Solomon coded segments: publishing shards, reading them and
// rebuilding a page from the other shards of its row.

// ShardID is the segment ID under which shard i of coded segment id is
// stored: a hash of both, with the top bit set so it never collides with a
// replicated segment's ID below 2^63.
func ShardID(id SegmentID, shard int) SegmentID {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], uint64(id))
	binary.LittleEndian.PutUint64(b[8:], uint64(shard))
	return SegmentID(xxhash.Sum64(b[:]) | 1<<63)
}

func (c *Client) publishEC(ctx context.Context, seg *SegmentInfo, data []byte) error {
	k, m := c.o.EC.Data, c.o.EC.Parity
	enc, err := reedsolomon.New(k, m)
	if err != nil {
		return err
	}
	ps := seg.PageSize
	rows := (seg.Pages + k - 1) / k
	shards := make([][]byte, k+m)
	for i := range shards {
		shards[i] = make([]byte, rows*ps)
		if i < k {
			lo := min(i*rows*ps, len(data))
			copy(shards[i], data[lo:min(lo+rows*ps, len(data))])
		}
	}
	if err := enc.Encode(shards); err != nil {
		return err
	}
	lay := &ECLayout{Data: k, Parity: m, ShardPages: rows, Shards: make([]Replica, k+m), ShardDigests: make([][]uint64, k+m)}
	nodes := c.rank(seg.ID)
	if len(nodes) < k+m { // the membership changed since Publish checked
		return fmt.Errorf("EC %d+%d needs %d nodes, have %d", k, m, k+m, len(nodes))
	}
	errs := make([]error, k+m)
	var wg sync.WaitGroup
	for i := range shards {
		lay.ShardDigests[i] = PageDigests(shards[i], ps)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &WriteSegment{ID: ShardID(seg.ID, i), PageSize: ps, Data: shards[i], Digests: lay.ShardDigests[i]}
			ref, err := c.writeOn(ctx, nodes[i], w)
			lay.Shards[i] = Replica{Node: nodes[i], Ref: ref}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("coded segment %#x: %w", seg.ID, err)
	}
	seg.EC = lay
	return nil
}

func (c *Client) readEC(ctx context.Context, seg *SegmentInfo, reqs []PageRead, p Priority, start time.Time) error {
	lay := seg.EC
	byShard := map[int][]int{}
	for i, r := range reqs {
		s := r.Page / lay.ShardPages
		byShard[s] = append(byShard[s], i)
	}
	var mu sync.Mutex
	var failed []int
	var wg sync.WaitGroup
	for s, idx := range byShard {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep := lay.Shards[s]
			n := c.node(rep.Node)
			ops := make([]ReadOp, len(idx))
			for j, ri := range idx {
				ops[j] = ReadOp{Seg: rep.Ref, Off: uint64(reqs[ri].Page%lay.ShardPages) * uint64(seg.PageSize), Dst: reqs[ri].Dst}
			}
			errs := c.fetch(ctx, n, ops, p)
			bad := false
			mu.Lock()
			defer mu.Unlock()
			for j, ri := range idx {
				if errs[j] == nil && Digest(reqs[ri].Dst) == seg.Digests[reqs[ri].Page] {
					c.hist[p].Record(time.Since(start))
					continue
				}
				if errs[j] == nil {
					c.digestFail.Add(1)
					bad = true
				}
				failed = append(failed, ri)
			}
			if bad {
				c.markDown(n, "digest mismatch", fmt.Errorf("shard %d", s))
			}
		}()
	}
	wg.Wait()
	for _, ri := range failed {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.failovers.Add(1)
		if err := c.reconstruct(ctx, seg, reqs[ri], p); err != nil {
			return err
		}
		c.hist[p].Record(time.Since(start))
	}
	return nil
}

// reconstruct rebuilds one page from the same row of the other shards:
// Reed–Solomon is byte-wise, so one row of every shard is itself a codeword.
func (c *Client) reconstruct(ctx context.Context, seg *SegmentInfo, r PageRead, p Priority) error {
	lay := seg.EC
	ps := seg.PageSize
	want := r.Page / lay.ShardPages
	row := r.Page % lay.ShardPages
	c.smu.Lock()
	defer c.smu.Unlock()
	if err := c.growScratch((lay.Data + lay.Parity) * ps); err != nil {
		return err
	}
	rows := c.readRow(ctx, seg, row, want, p)
	have := 0
	for _, b := range rows {
		if b != nil {
			have++
		}
	}
	if have < lay.Data {
		return fmt.Errorf("page %d of coded segment %#x: only %d of the %d shards needed are readable", r.Page, seg.ID, have, lay.Data)
	}
	enc, err := reedsolomon.New(lay.Data, lay.Parity)
	if err != nil {
		return err
	}
	rows[want] = r.Dst[:0]
	if err := enc.ReconstructData(rows); err != nil {
		return fmt.Errorf("reconstruct page %d of %#x: %w", r.Page, seg.ID, err)
	}
	if len(rows[want]) != ps || &rows[want][0] != &r.Dst[0] {
		copy(r.Dst, rows[want])
	}
	if Digest(r.Dst) != seg.Digests[r.Page] {
		return fmt.Errorf("reconstructed page %d of %#x fails its digest", r.Page, seg.ID)
	}
	c.recon.Add(1)
	return nil
}

// growScratch makes the registered scratch buffer at least n bytes long.
// The caller holds smu.
func (c *Client) growScratch(n int) error {
	if c.scratch != nil && c.scratch.Len() >= n {
		return nil
	}
	c.freeScratch()
	m, err := offheap.Anon(n, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		return err
	}
	reg, err := c.o.Transport.Register(m.B)
	if err != nil {
		m.Unmap()
		return err
	}
	c.scratch, c.sreg = m, reg
	return nil
}

// freeScratch releases the scratch buffer, if any. The caller holds smu.
func (c *Client) freeScratch() {
	if c.sreg != nil {
		c.sreg.Release()
		c.scratch.Unmap()
		c.sreg, c.scratch = nil, nil
	}
}

// readRow reads row of every shard but skip into the scratch buffer, in
// parallel, and returns the rows that arrived and match their digests (nil
// for the others). The caller holds smu.
func (c *Client) readRow(ctx context.Context, seg *SegmentInfo, row, skip int, p Priority) [][]byte {
	lay := seg.EC
	ps := seg.PageSize
	rows := make([][]byte, lay.Data+lay.Parity)
	var wg sync.WaitGroup
	for s := range rows {
		if s == skip {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := c.scratch.B[s*ps : (s+1)*ps]
			rep := lay.Shards[s]
			errs := c.fetch(ctx, c.node(rep.Node), []ReadOp{{Seg: rep.Ref, Off: uint64(row) * uint64(ps), Dst: dst}}, p)
			if errs[0] == nil && Digest(dst) == lay.ShardDigests[s][row] {
				rows[s] = dst
			}
		}()
	}
	wg.Wait()
	return rows
}
