package rdma

import (
	"github.com/cespare/xxhash/v2"
)

// What a stored segment is: its pages, their digests and where its copies
// (or shards) live.

// Digest is the per-page digest used everywhere in the cold tier.
func Digest(page []byte) uint64 { return xxhash.Sum64(page) }

// Replica is one stored copy (or shard) of a segment.
type Replica struct {
	Node NodeID
	Ref  SegmentRef
}

// SegmentInfo is everything a reader needs to read and verify a segment;
// it is what the control plane stores in its catalog.
type SegmentInfo struct {
	ID       SegmentID
	PageSize int
	Pages    int
	Digests  []uint64  // per page
	Replicas []Replica // replicated layout
	EC       *ECLayout // erasure-coded layout (Replicas empty)
}

// ECLayout places a coded segment: page p is row p%ShardPages of data shard
// p/ShardPages; every shard has a digest per row.
type ECLayout struct {
	Data, Parity int
	ShardPages   int
	Shards       []Replica  // Data+Parity
	ShardDigests [][]uint64 // [shard][row]
}

// PageRead asks for one page into Dst (len(Dst) == PageSize, registered).
type PageRead struct {
	Page int
	Dst  []byte
}

// PageDigests returns the digest of every page of data.
func PageDigests(data []byte, pageSize int) []uint64 {
	d := make([]uint64, len(data)/pageSize)
	for i := range d {
		d[i] = Digest(data[i*pageSize : (i+1)*pageSize])
	}
	return d
}
