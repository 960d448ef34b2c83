package control

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Member is a pager host or a memory node registered under a lease.
type Member struct {
	ID       string `json:"id"`
	Addr     string `json:"addr,omitempty"`
	Capacity uint64 `json:"capacity,omitempty"`
	Used     uint64 `json:"used,omitempty"`
	// Epoch is the lease ID: a member that re-registers gets a new epoch.
	Epoch int64 `json:"epoch"`
}

// Free returns unused capacity.
func (m Member) Free() uint64 {
	if m.Used >= m.Capacity {
		return 0
	}
	return m.Capacity - m.Used
}

// Registration keeps a member alive until Close (or the process dies and
// the lease expires after its TTL).
type Registration struct {
	Lease  clientv3.LeaseID
	cancel context.CancelFunc
	p      *Plane
	key    string
}

// Close revokes the lease, removing the member at once.
func (r *Registration) Close(ctx context.Context) error {
	r.cancel()
	ctx, cancel := r.p.op(ctx)
	defer cancel()
	_, err := r.p.Client.Revoke(ctx, r.Lease)
	return r.p.fail("revoke "+r.key, err)
}

// RegisterHost registers a pager host.
func (p *Plane) RegisterHost(ctx context.Context, m Member, ttlSeconds int64) (*Registration, error) {
	return p.register(ctx, prefixHost, m, ttlSeconds)
}

// RegisterMemNode registers a memory node.
func (p *Plane) RegisterMemNode(ctx context.Context, m Member, ttlSeconds int64) (*Registration, error) {
	return p.register(ctx, prefixMemnode, m, ttlSeconds)
}

func (p *Plane) register(ctx context.Context, prefix string, m Member, ttl int64) (*Registration, error) {
	if err := ValidName(m.ID); err != nil {
		return nil, err
	}
	if ttl <= 0 {
		ttl = 5
	}
	ctx, cancel := p.op(ctx)
	defer cancel()
	l, err := p.Client.Grant(ctx, ttl)
	if err != nil {
		return nil, p.fail("lease for "+m.ID, err)
	}
	m.Epoch = int64(l.ID)
	b, _ := json.Marshal(m)
	if _, err := p.Client.Put(ctx, prefix+m.ID, string(b), clientv3.WithLease(l.ID)); err != nil {
		return nil, p.fail("register "+m.ID, err)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ch, err := p.Client.KeepAlive(kctx, l.ID)
	if err != nil {
		kcancel()
		return nil, p.fail("keep "+m.ID+" alive", err)
	}
	go func() {
		for range ch {
		}
	}()
	return &Registration{Lease: l.ID, cancel: kcancel, p: p, key: prefix + m.ID}, nil
}

// UpdateUsage records a memory node's used bytes under its lease.
func (p *Plane) UpdateUsage(ctx context.Context, r *Registration, m Member) error {
	m.Epoch = int64(r.Lease)
	b, _ := json.Marshal(m)
	ctx, cancel := p.op(ctx)
	defer cancel()
	_, err := p.Client.Put(ctx, r.key, string(b), clientv3.WithLease(r.Lease))
	return p.fail("update "+m.ID, err)
}

// Hosts lists live pager hosts.
func (p *Plane) Hosts(ctx context.Context) ([]Member, error) { return p.members(ctx, prefixHost) }

// MemNodes lists live memory nodes.
func (p *Plane) MemNodes(ctx context.Context) ([]Member, error) { return p.members(ctx, prefixMemnode) }

func (p *Plane) members(ctx context.Context, prefix string) ([]Member, error) {
	ctx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, p.fail("list members", err)
	}
	out := make([]Member, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		var m Member
		if err := json.Unmarshal(kv.Value, &m); err != nil {
			return nil, fmt.Errorf("control: corrupt member %s: %w", kv.Key, err)
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// PlaceSegment picks r distinct memory nodes for a segment of n bytes:
// those with the most free capacity that can hold it (capacity-aware
// placement). It fails when fewer than r nodes can.
func PlaceSegment(nodes []Member, n uint64, r int) ([]Member, error) {
	cand := make([]Member, 0, len(nodes))
	for _, m := range nodes {
		if m.Free() >= n {
			cand = append(cand, m)
		}
	}
	if len(cand) < r {
		return nil, fmt.Errorf("control: %d bytes at replication %d: only %d of %d memory nodes have room", n, r, len(cand), len(nodes))
	}
	sort.SliceStable(cand, func(i, j int) bool {
		if cand[i].Free() != cand[j].Free() {
			return cand[i].Free() > cand[j].Free()
		}
		return cand[i].ID < cand[j].ID
	})
	return cand[:r], nil
}
