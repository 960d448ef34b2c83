package rdma

import (
	"cmp"
	"encoding/binary"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// Placement: which nodes a new segment goes to.

// rank orders nodes for a segment by rendezvous hashing (stable under node
// addition/removal), healthy nodes first.
func (c *Client) rank(id SegmentID) []NodeID {
	type sc struct {
		n NodeID
		s uint64
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(id))
	var up, down []sc
	for _, n := range c.Nodes() {
		h := xxhash.New()
		h.Write(b[:])
		h.WriteString(string(n))
		e := sc{n, h.Sum64()}
		if c.node(n).isDown() {
			down = append(down, e)
		} else {
			up = append(up, e)
		}
	}
	byScore := func(a, b sc) int { return cmp.Compare(b.s, a.s) } // highest first
	slices.SortFunc(up, byScore)
	slices.SortFunc(down, byScore)
	var out []NodeID
	for _, e := range append(up, down...) {
		out = append(out, e.n)
	}
	return out
}

// candidates is the order in which nodes are tried for a new replicated
// segment of size bytes: capacity-aware placement from the control plane
// (Options.Place) first, the rendezvous order behind it as the fallback for
// full or failing nodes. Nodes Place names that are not the client's are
// dropped.
func (c *Client) candidates(id SegmentID, size int) []NodeID {
	cands := c.rank(id)
	if c.o.Place == nil {
		return cands
	}
	pl := c.o.Place(id, size)
	if len(pl) == 0 {
		return cands
	}
	seen := map[NodeID]bool{}
	ordered := make([]NodeID, 0, len(cands))
	for _, n := range append(pl, cands...) {
		if !seen[n] && slices.Contains(cands, n) {
			seen[n] = true
			ordered = append(ordered, n)
		}
	}
	return ordered
}
