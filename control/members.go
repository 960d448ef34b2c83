package control

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

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
	// Self: a memory node that registered itself (under its own lease)
	// and reports its usage; otherwise a host recorded it and Used is
	// what that host knows.
	Self bool `json:"self,omitempty"`
}

// Free returns unused capacity.
func (m Member) Free() uint64 {
	if m.Used >= m.Capacity {
		return 0
	}
	return m.Capacity - m.Used
}

// Registration keeps a member registered until Close (or the process dies
// and the lease expires after its TTL). If the lease is lost while the
// process lives — etcd was unreachable for longer than the TTL, so the
// client gave up on the lease or etcd expired it — the registration
// notices its keepalive ended and creates the key again under a new lease
// as soon as etcd answers, logging it and calling Plane.Reregistered.
type Registration struct {
	p      *Plane
	prefix string
	key    string
	ttl    int64
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	lease clientv3.LeaseID
	m     Member
}

// Lease returns the registration's current lease (it changes when the
// registration is re-created).
func (r *Registration) Lease() clientv3.LeaseID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease
}

// Close stops keeping the member alive and revokes its lease, removing
// the member at once.
func (r *Registration) Close(ctx context.Context) error {
	r.cancel()
	<-r.done
	ctx, cancel := r.p.op(ctx)
	defer cancel()
	_, err := r.p.Client.Revoke(ctx, r.Lease())
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
	kctx, kcancel := context.WithCancel(context.Background())
	r := &Registration{p: p, prefix: prefix, key: prefix + m.ID, ttl: ttl, cancel: kcancel, done: make(chan struct{}), m: m}
	ch, err := r.grant(ctx, kctx)
	if err != nil {
		kcancel()
		return nil, err
	}
	go r.keep(kctx, ch)
	return r, nil
}

// grant puts the member's key under a new lease and starts keeping that
// lease alive.
func (r *Registration) grant(ctx, keepCtx context.Context) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	p := r.p
	ctx, cancel := p.op(ctx)
	defer cancel()
	r.mu.Lock()
	m := r.m
	r.mu.Unlock()
	l, err := p.Client.Grant(ctx, r.ttl)
	if err != nil {
		return nil, p.fail("lease for "+m.ID, err)
	}
	m.Epoch = int64(l.ID)
	b, _ := json.Marshal(m)
	if _, err := p.Client.Put(ctx, r.key, string(b), clientv3.WithLease(l.ID)); err != nil {
		p.Client.Revoke(ctx, l.ID)
		return nil, p.fail("register "+m.ID, err)
	}
	ch, err := p.Client.KeepAlive(keepCtx, l.ID)
	if err != nil {
		return nil, p.fail("keep "+m.ID+" alive", err)
	}
	r.mu.Lock()
	r.lease = l.ID
	r.mu.Unlock()
	return ch, nil
}

// keep drains keepalive answers; when the channel closes while the
// registration is open, the lease is gone: register again, retrying with
// backoff until etcd answers.
func (r *Registration) keep(ctx context.Context, ch <-chan *clientv3.LeaseKeepAliveResponse) {
	defer close(r.done)
	log := r.p.logger()
	for {
		for range ch {
		}
		if ctx.Err() != nil {
			return
		}
		old := r.Lease()
		log.Warn("control-plane registration lost its lease (etcd unreachable for longer than the lease?); registering again",
			"key", r.key, "lease", fmt.Sprintf("%x", int64(old)), "ttl_seconds", r.ttl)
		wait := 100 * time.Millisecond
		for {
			var err error
			if ch, err = r.grant(ctx, ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			log.Debug("re-registration failed; retrying", "key", r.key, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, 2*time.Second)
		}
		log.Info("control-plane registration re-created", "key", r.key, "lease", fmt.Sprintf("%x", int64(r.Lease())))
		if f := r.p.Reregistered; f != nil {
			f(strings.Trim(strings.TrimPrefix(r.prefix, "/aquifer/"), "/"), r.m.ID)
		}
		// The old lease may still live in etcd (the client gave up on it
		// first): revoke it so it cannot linger.
		rctx, cancel := r.p.op(ctx)
		r.p.Client.Revoke(rctx, old)
		cancel()
	}
}

// UpdateUsage records a memory node's used bytes under its lease.
func (p *Plane) UpdateUsage(ctx context.Context, r *Registration, m Member) error {
	r.mu.Lock()
	r.m = m
	lease := r.lease
	r.mu.Unlock()
	m.Epoch = int64(lease)
	b, _ := json.Marshal(m)
	ctx, cancel := p.op(ctx)
	defer cancel()
	_, err := p.Client.Put(ctx, r.key, string(b), clientv3.WithLease(lease))
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
			return nil, fmt.Errorf("corrupt member %s: %w", kv.Key, err)
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
		return nil, fmt.Errorf("%d bytes at replication %d: only %d of %d memory nodes have room", n, r, len(cand), len(nodes))
	}
	sort.SliceStable(cand, func(i, j int) bool {
		if cand[i].Free() != cand[j].Free() {
			return cand[i].Free() > cand[j].Free()
		}
		return cand[i].ID < cand[j].ID
	})
	return cand[:r], nil
}

// Draining memory nodes: /aquifer/drain/<addr> = "pending" | "done".
const prefixDrain = "/aquifer/drain/"

// RequestDrain asks the memory tier to move every segment off the node at
// addr (placement no longer uses it).
func (p *Plane) RequestDrain(ctx context.Context, addr string) error {
	ctx, cancel := p.op(ctx)
	defer cancel()
	_, err := p.Client.Put(ctx, prefixDrain+addr, "pending")
	return p.fail("request a drain of "+addr, err)
}

// Drains returns every drain request: addr → "pending" or "done".
func (p *Plane) Drains(ctx context.Context) (map[string]string, error) {
	ctx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Get(ctx, prefixDrain, clientv3.WithPrefix())
	if err != nil {
		return nil, p.fail("read drain requests", err)
	}
	out := map[string]string{}
	for _, kv := range r.Kvs {
		out[strings.TrimPrefix(string(kv.Key), prefixDrain)] = string(kv.Value)
	}
	return out, nil
}

// DrainDone records that no segment is left on addr.
func (p *Plane) DrainDone(ctx context.Context, addr string) error {
	ctx, cancel := p.op(ctx)
	defer cancel()
	_, err := p.Client.Put(ctx, prefixDrain+addr, "done")
	return p.fail("record the drain of "+addr, err)
}
