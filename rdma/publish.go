package rdma

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
)

// Publishing and deleting replicated segments.

func (c *Client) writeOn(ctx context.Context, n NodeID, w *WriteSegment) (SegmentRef, error) {
	nd := c.node(n)
	cc, err := c.conn(ctx, nd, Demand)
	if err != nil {
		c.markDown(nd, "dial", err)
		return SegmentRef{}, err
	}
	return cc.c.Write(ctx, w)
}

// Publish stores an immutable segment on R nodes (or as EC shards) and
// returns the SegmentInfo readers need. len(data) must be a multiple of
// pageSize. It fails unless every copy (every shard) was stored.
func (c *Client) Publish(ctx context.Context, id SegmentID, pageSize int, data []byte) (*SegmentInfo, error) {
	if pageSize <= 0 || len(data) == 0 || len(data)%pageSize != 0 {
		return nil, fmt.Errorf("segment of %d bytes is not a whole number of %d-byte pages", len(data), pageSize)
	}
	if err := enoughNodes(&c.o, len(c.Nodes())); err != nil {
		return nil, fmt.Errorf("%w (memory nodes known now: %v)", err, c.Nodes())
	}
	seg := &SegmentInfo{ID: id, PageSize: pageSize, Pages: len(data) / pageSize, Digests: PageDigests(data, pageSize)}
	if c.o.EC != nil {
		return seg, c.publishEC(ctx, seg, data)
	}
	if err := c.publishReplicas(ctx, seg, data); err != nil {
		return nil, err
	}
	return seg, nil
}

// publishReplicas stores R copies of seg, writing to the candidates in
// placement order (R at a time, then one more for every write that failed)
// until R copies are stored or no candidate is left. seg.Replicas ends up
// sorted by node.
func (c *Client) publishReplicas(ctx context.Context, seg *SegmentInfo, data []byte) error {
	w := &WriteSegment{ID: seg.ID, PageSize: seg.PageSize, Data: data, Digests: seg.Digests}
	type res struct {
		n   NodeID
		ref SegmentRef
		err error
	}
	cands := c.candidates(seg.ID, len(data))
	next := 0
	var errs []error
	for len(seg.Replicas) < c.o.Replicas && next < len(cands) {
		want := c.o.Replicas - len(seg.Replicas)
		ch := make(chan res, want)
		launched := 0
		for ; launched < want && next < len(cands); next++ {
			n := cands[next]
			launched++
			go func() {
				ref, err := c.writeOn(ctx, n, w)
				ch <- res{n, ref, err}
			}()
		}
		for range launched {
			r := <-ch
			if r.err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", r.n, r.err))
				continue
			}
			seg.Replicas = append(seg.Replicas, Replica{Node: r.n, Ref: r.ref})
		}
	}
	if len(seg.Replicas) < c.o.Replicas {
		return fmt.Errorf("segment %#x stored on %d of %d replicas: %w", seg.ID, len(seg.Replicas), c.o.Replicas, errors.Join(errs...))
	}
	slices.SortFunc(seg.Replicas, func(a, b Replica) int { return cmp.Compare(a.Node, b.Node) })
	return nil
}

// Delete removes a segment's copies (or shards) from their nodes.
func (c *Client) Delete(ctx context.Context, seg *SegmentInfo) error {
	reps := seg.Replicas
	if seg.EC != nil {
		reps = seg.EC.Shards
	}
	var errs []error
	for _, r := range reps {
		cc, err := c.conn(ctx, c.node(r.Node), Demand)
		if err == nil {
			err = cc.c.Delete(ctx, r.Ref.ID)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Node, err))
		}
	}
	return errors.Join(errs...)
}
