package pod

import (
	"context"
	"errors"
)

// Lease is a host's membership in the pod, granted by the control plane.
// ID is unique and increasing across grants (an etcd lease ID or the
// revision at which it was granted). A host whose lease expired is fenced:
// its slot is ignored by reclamation and it must Join again (new ID) before
// it reads.
type Lease struct {
	Host int
	ID   uint64
}

// Ref names one published version of an extent: the catalog value a reader
// looks up. A reader accepts a descriptor only if its generation and token
// equal the Ref's.
type Ref struct {
	Desc  int    // global descriptor index
	Gen   uint64 // even generation of the Published descriptor
	Token uint64 // fencing token of the chunk owner that published it
	Len   uint32
}

// Control-plane errors.
var (
	ErrFenced   = errors.New("lease or fencing token is no longer valid")
	ErrOwned    = errors.New("chunk is owned by another live host")
	ErrNotFound = errors.New("key not in catalog")
)

// Coordinator is the control plane the protocol relies on for everything
// that needs consensus: membership (leases), chunk ownership with fencing
// tokens, and the catalog mapping keys to published extents. Nothing here is
// ever done with cross-host atomics on the region.
//
// It is shaped for etcd (the pool issue): Join = lease grant, Live = the set
// of keys under a lease prefix, AcquireChunk = a txn that creates the chunk
// key if absent or held by an expired lease, returning the txn revision as
// the token; Publish = a txn comparing the chunk key's value to (lease,
// token) before putting the catalog key and returning the previous value.
// Every method must be linearizable.
type Coordinator interface {
	Join(ctx context.Context, host int) (Lease, error)
	Leave(ctx context.Context, l Lease) error
	// Live returns the leases currently alive, ordered by host.
	Live(ctx context.Context) ([]Lease, error)
	// AcquireChunk makes l the owner of chunk and returns a fencing token
	// larger than every token handed out before for any chunk.
	AcquireChunk(ctx context.Context, l Lease, chunk int) (token uint64, err error)
	ReleaseChunk(ctx context.Context, l Lease, chunk int, token uint64) error
	// Publish atomically checks that l is alive and still owns chunk with
	// token, then sets key to ref, returning the previous value if any.
	Publish(ctx context.Context, l Lease, chunk int, token uint64, key string, ref Ref) (prev Ref, replaced bool, err error)
	// Unpublish deletes key if it still maps to ref (same ownership check).
	Unpublish(ctx context.Context, l Lease, chunk int, token uint64, key string, ref Ref) error
	Lookup(ctx context.Context, key string) (Ref, error)
}
