package pod

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
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
	ErrFenced   = errors.New("pod: lease or fencing token is no longer valid")
	ErrOwned    = errors.New("pod: chunk is owned by another live host")
	ErrNotFound = errors.New("pod: key not in catalog")
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

// MemCoordinator is an in-memory, linearizable Coordinator for tests and
// single-process use. Expire simulates lease expiry.
type MemCoordinator struct {
	mu      sync.Mutex
	rev     uint64
	leases  map[int]Lease
	owners  map[int]chunkOwner
	catalog map[string]Ref
}

type chunkOwner struct {
	lease Lease
	token uint64
}

// NewMemCoordinator returns an empty control plane.
func NewMemCoordinator() *MemCoordinator {
	return &MemCoordinator{leases: map[int]Lease{}, owners: map[int]chunkOwner{}, catalog: map[string]Ref{}}
}

func (m *MemCoordinator) live(l Lease) bool { cur, ok := m.leases[l.Host]; return ok && cur == l }

func (m *MemCoordinator) Join(_ context.Context, host int) (Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if host < 0 {
		return Lease{}, fmt.Errorf("pod: host index %d", host)
	}
	m.rev++
	l := Lease{Host: host, ID: m.rev}
	m.leases[host] = l
	return l, nil
}

func (m *MemCoordinator) Leave(_ context.Context, l Lease) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.live(l) {
		delete(m.leases, l.Host)
		m.rev++
	}
	return nil
}

// Expire drops host's lease as if its keep-alives had stopped.
func (m *MemCoordinator) Expire(host int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.leases, host)
	m.rev++
}

func (m *MemCoordinator) Live(context.Context) ([]Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Lease, 0, len(m.leases))
	for _, l := range m.leases {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

func (m *MemCoordinator) AcquireChunk(_ context.Context, l Lease, chunk int) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.live(l) {
		return 0, ErrFenced
	}
	if o, ok := m.owners[chunk]; ok && o.lease != l && m.live(o.lease) {
		return 0, fmt.Errorf("%w: chunk %d by host %d", ErrOwned, chunk, o.lease.Host)
	}
	m.rev++
	m.owners[chunk] = chunkOwner{lease: l, token: m.rev}
	return m.rev, nil
}

func (m *MemCoordinator) ReleaseChunk(_ context.Context, l Lease, chunk int, token uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if o, ok := m.owners[chunk]; ok && o.lease == l && o.token == token {
		delete(m.owners, chunk)
		m.rev++
		return nil
	}
	return ErrFenced
}

func (m *MemCoordinator) check(l Lease, chunk int, token uint64) error {
	if !m.live(l) {
		return ErrFenced
	}
	if o, ok := m.owners[chunk]; !ok || o.lease != l || o.token != token {
		return ErrFenced
	}
	return nil
}

func (m *MemCoordinator) Publish(_ context.Context, l Lease, chunk int, token uint64, key string, ref Ref) (Ref, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(l, chunk, token); err != nil {
		return Ref{}, false, err
	}
	prev, ok := m.catalog[key]
	m.catalog[key] = ref
	m.rev++
	return prev, ok, nil
}

func (m *MemCoordinator) Unpublish(_ context.Context, l Lease, chunk int, token uint64, key string, ref Ref) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(l, chunk, token); err != nil {
		return err
	}
	if cur, ok := m.catalog[key]; ok && cur == ref {
		delete(m.catalog, key)
		m.rev++
	}
	return nil
}

func (m *MemCoordinator) Lookup(_ context.Context, key string) (Ref, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.catalog[key]
	if !ok {
		return Ref{}, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	return r, nil
}
