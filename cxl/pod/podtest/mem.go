package podtest

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/aquifer-pool/aquifer/cxl/pod"
)

// MemCoordinator is an in-memory, linearizable [pod.Coordinator] for tests.
// Expire simulates lease expiry.
type MemCoordinator struct {
	mu      sync.Mutex
	rev     uint64
	leases  map[int]pod.Lease
	owners  map[int]chunkOwner
	catalog map[string]pod.Ref
}

var _ pod.Coordinator = (*MemCoordinator)(nil)

type chunkOwner struct {
	lease pod.Lease
	token uint64
}

// NewMemCoordinator returns an empty control plane.
func NewMemCoordinator() *MemCoordinator {
	return &MemCoordinator{leases: map[int]pod.Lease{}, owners: map[int]chunkOwner{}, catalog: map[string]pod.Ref{}}
}

func (m *MemCoordinator) live(l pod.Lease) bool { cur, ok := m.leases[l.Host]; return ok && cur == l }

func (m *MemCoordinator) Join(_ context.Context, host int) (pod.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if host < 0 {
		return pod.Lease{}, fmt.Errorf("pod: host index %d", host)
	}
	m.rev++
	l := pod.Lease{Host: host, ID: m.rev}
	m.leases[host] = l
	return l, nil
}

func (m *MemCoordinator) Leave(_ context.Context, l pod.Lease) error {
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

func (m *MemCoordinator) Live(context.Context) ([]pod.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]pod.Lease, 0, len(m.leases))
	for _, l := range m.leases {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

func (m *MemCoordinator) AcquireChunk(_ context.Context, l pod.Lease, chunk int) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.live(l) {
		return 0, pod.ErrFenced
	}
	if o, ok := m.owners[chunk]; ok && o.lease != l && m.live(o.lease) {
		return 0, fmt.Errorf("%w: chunk %d by host %d", pod.ErrOwned, chunk, o.lease.Host)
	}
	m.rev++
	m.owners[chunk] = chunkOwner{lease: l, token: m.rev}
	return m.rev, nil
}

func (m *MemCoordinator) ReleaseChunk(_ context.Context, l pod.Lease, chunk int, token uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if o, ok := m.owners[chunk]; ok && o.lease == l && o.token == token {
		delete(m.owners, chunk)
		m.rev++
		return nil
	}
	return pod.ErrFenced
}

func (m *MemCoordinator) check(l pod.Lease, chunk int, token uint64) error {
	if !m.live(l) {
		return pod.ErrFenced
	}
	if o, ok := m.owners[chunk]; !ok || o.lease != l || o.token != token {
		return pod.ErrFenced
	}
	return nil
}

func (m *MemCoordinator) Publish(_ context.Context, l pod.Lease, chunk int, token uint64, key string, ref pod.Ref) (pod.Ref, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(l, chunk, token); err != nil {
		return pod.Ref{}, false, err
	}
	prev, ok := m.catalog[key]
	m.catalog[key] = ref
	m.rev++
	return prev, ok, nil
}

func (m *MemCoordinator) Unpublish(_ context.Context, l pod.Lease, chunk int, token uint64, key string, ref pod.Ref) error {
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

func (m *MemCoordinator) Lookup(_ context.Context, key string) (pod.Ref, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.catalog[key]
	if !ok {
		return pod.Ref{}, fmt.Errorf("%w: %q", pod.ErrNotFound, key)
	}
	return r, nil
}
