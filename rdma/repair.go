package rdma

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/aquifer-pool/aquifer/offheap"
	"golang.org/x/sys/unix"
)

// Repairing and moving replicated segments: the memory tier's own
// housekeeping (re-replication after a node is lost, draining a node that
// leaves).

// Rereplicate brings seg back to the client's replica count on nodes that
// drop rejects not: replicas on dropped nodes are given up, the segment is
// read (every page digest-verified) from a surviving replica and written to
// new nodes in placement order until it has Replicas copies again. It
// returns the new SegmentInfo and whether anything changed; seg itself is
// not modified. Coded (EC) segments are not repaired here.
func (c *Client) Rereplicate(ctx context.Context, seg *SegmentInfo, drop func(NodeID) bool) (*SegmentInfo, bool, error) {
	if seg.EC != nil {
		return seg, false, nil
	}
	var keep []Replica
	for _, r := range seg.Replicas {
		if !drop(r.Node) {
			keep = append(keep, r)
		}
	}
	if len(keep) == len(seg.Replicas) && len(keep) >= c.o.Replicas {
		return seg, false, nil
	}
	if len(keep) == 0 {
		return seg, false, fmt.Errorf("segment %#x has no surviving replica (it was on %v)", seg.ID, seg.Replicas)
	}
	out := *seg
	out.Replicas = keep
	if len(keep) >= c.o.Replicas {
		return &out, true, nil // only dropped copies to forget
	}
	n := seg.Pages * seg.PageSize
	m, err := offheap.Anon(n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		return seg, false, err
	}
	defer m.Unmap()
	reg, err := c.o.Transport.Register(m.B)
	if err != nil {
		return seg, false, err
	}
	defer reg.Release()
	reqs := make([]PageRead, seg.Pages)
	for i := range reqs {
		reqs[i] = PageRead{Page: i, Dst: m.B[i*seg.PageSize : (i+1)*seg.PageSize]}
	}
	if err := c.Read(ctx, &out, reqs); err != nil {
		return seg, false, fmt.Errorf("reading segment %#x to re-replicate it: %w", seg.ID, err)
	}
	w := &WriteSegment{ID: seg.ID, PageSize: seg.PageSize, Data: m.B, Digests: seg.Digests}
	have := map[NodeID]bool{}
	for _, r := range keep {
		have[r.Node] = true
	}
	var errs []error
	for _, cand := range c.candidates(seg.ID, n) {
		if len(out.Replicas) >= c.o.Replicas {
			break
		}
		if have[cand] || drop(cand) {
			continue
		}
		ref, err := c.writeOn(ctx, cand, w)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", cand, err))
			continue
		}
		out.Replicas = append(out.Replicas, Replica{Node: cand, Ref: ref})
		have[cand] = true
	}
	slices.SortFunc(out.Replicas, func(a, b Replica) int { return cmp.Compare(a.Node, b.Node) })
	if len(out.Replicas) < c.o.Replicas {
		// Keep what was written: fewer copies than wanted is still better.
		return &out, len(out.Replicas) > len(keep), fmt.Errorf("segment %#x back to %d of %d replicas: %w", seg.ID, len(out.Replicas), c.o.Replicas, errors.Join(errs...))
	}
	return &out, true, nil
}

// DeleteOn removes segment id's copy from one node.
func (c *Client) DeleteOn(ctx context.Context, node NodeID, id SegmentID) error {
	cc, err := c.conn(ctx, c.node(node), Demand)
	if err != nil {
		return err
	}
	return cc.c.Delete(ctx, id)
}

// Replicas is the replica count the client keeps.
func (c *Client) Replicas() int { return c.o.Replicas }
