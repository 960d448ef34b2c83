package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// PodLease is a host's membership of a pod: its host slot and the lease
// identity it was granted (the revision of its slot key).
type PodLease struct {
	Host int
	ID   uint64
}

// ExtentRef is the catalog value of a published CXL extent: descriptor,
// generation, the fencing token it was published under, and length. The
// control plane stores it; it never reads the extent.
type ExtentRef struct {
	Desc  int    `json:"Desc"`
	Gen   uint64 `json:"Gen"`
	Token uint64 `json:"Token"`
	Len   uint32 `json:"Len"`
}

// Ownership errors of a pod.
var (
	// ErrOwned: the chunk is owned by another live host.
	ErrOwned = errors.New("chunk is owned by another live host")
	// ErrSlotTaken: the host slot is held by a live host.
	ErrSlotTaken = errors.New("host slot is held by a live host")
)

// PodState keeps one pod's coherence state in etcd: host slots under
// leases, chunk ownership with fencing tokens, and the pod catalog of
// published extents.
//
//	/aquifer/pods/<pod>/hosts/<host>    leased; its create revision is the host's PodLease.ID
//	/aquifer/pods/<pod>/chunks/<chunk>  "<host>/<lease>", leased by the owner; its create revision is the fencing token
//	/aquifer/pods/<pod>/catalog/<key>   ExtentRef (JSON)
//
// Chunk keys are attached to the owner's etcd lease, so a host whose lease
// expires loses its chunks at once; every publish is a transaction
// conditioned on the host key and the chunk key still carrying the
// revisions the host was handed. Package pool adapts it to the protocol's
// Coordinator (cxl/pod); this package knows nothing of the region.
type PodState struct {
	p    *Plane
	pre  string
	ttl  int64
	mu   sync.Mutex
	lids map[uint64]clientv3.LeaseID // PodLease.ID → etcd lease
	stop map[uint64]context.CancelFunc
}

// NewPodState returns the coherence state of pod name.
func (p *Plane) NewPodState(name string, ttlSeconds int64) (*PodState, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if ttlSeconds <= 0 {
		ttlSeconds = 10
	}
	return &PodState{p: p, pre: "/aquifer/pods/" + name + "/", ttl: ttlSeconds,
		lids: map[uint64]clientv3.LeaseID{}, stop: map[uint64]context.CancelFunc{}}, nil
}

func (c *PodState) hostKey(h int) string  { return c.pre + "hosts/" + strconv.Itoa(h) }
func (c *PodState) chunkKey(n int) string { return c.pre + "chunks/" + strconv.Itoa(n) }
func (c *PodState) catKey(k string) string {
	return c.pre + "catalog/" + k
}

// Join takes host slot host under a new lease.
func (c *PodState) Join(ctx context.Context, host int) (PodLease, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	l, err := c.p.Client.Grant(ctx, c.ttl)
	if err != nil {
		return PodLease{}, c.p.fail("pod lease", err)
	}
	r, err := c.p.Client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(c.hostKey(host)), "=", 0)).
		Then(clientv3.OpPut(c.hostKey(host), strconv.FormatInt(int64(l.ID), 10), clientv3.WithLease(l.ID))).Commit()
	if err != nil {
		c.p.revokeLater(l.ID)
		return PodLease{}, c.p.fail(fmt.Sprintf("join host slot %d", host), err)
	}
	if !r.Succeeded {
		c.p.revokeLater(l.ID)
		return PodLease{}, fmt.Errorf("pod host slot %d: %w", host, ErrSlotTaken)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ch, err := c.p.Client.KeepAlive(kctx, l.ID)
	if err != nil {
		kcancel()
		return PodLease{}, c.p.fail("keep the pod lease alive", err)
	}
	go func() {
		for range ch {
		}
	}()
	ls := PodLease{Host: host, ID: uint64(r.Header.Revision)}
	c.mu.Lock()
	c.lids[ls.ID], c.stop[ls.ID] = l.ID, kcancel
	c.mu.Unlock()
	return ls, nil
}

// Leave gives the slot up (its chunks go with it).
func (c *PodState) Leave(ctx context.Context, l PodLease) error {
	c.mu.Lock()
	lid, ok := c.lids[l.ID]
	if cancel := c.stop[l.ID]; cancel != nil {
		cancel()
	}
	delete(c.lids, l.ID)
	delete(c.stop, l.ID)
	c.mu.Unlock()
	if !ok {
		return ErrFenced
	}
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	_, err := c.p.Client.Revoke(ctx, lid)
	return c.p.fail("leave the pod", err)
}

// Live returns the live leases ordered by host.
func (c *PodState) Live(ctx context.Context) ([]PodLease, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(ctx, c.pre+"hosts/", clientv3.WithPrefix())
	if err != nil {
		return nil, c.p.fail("list pod hosts", err)
	}
	var out []PodLease
	for _, kv := range r.Kvs {
		h, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), c.pre+"hosts/"))
		if err != nil {
			continue
		}
		out = append(out, PodLease{Host: h, ID: uint64(kv.CreateRevision)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

func (c *PodState) alive(l PodLease) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(c.hostKey(l.Host)), "=", int64(l.ID))
}

func (c *PodState) owns(chunk int, token uint64) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(c.chunkKey(chunk)), "=", int64(token))
}

// AcquireChunk makes l the owner of chunk and returns its fencing token.
func (c *PodState) AcquireChunk(ctx context.Context, l PodLease, chunk int) (uint64, error) {
	c.mu.Lock()
	lid, ok := c.lids[l.ID]
	c.mu.Unlock()
	if !ok {
		return 0, ErrFenced
	}
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	k := c.chunkKey(chunk)
	r, err := c.p.Client.Txn(ctx).If(c.alive(l), clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, fmt.Sprintf("%d/%d", l.Host, l.ID), clientv3.WithLease(lid))).
		Else(clientv3.OpGet(c.hostKey(l.Host))).Commit()
	if err != nil {
		return 0, c.p.fail(fmt.Sprintf("acquire chunk %d", chunk), err)
	}
	if !r.Succeeded {
		if g := r.Responses[0].GetResponseRange(); g == nil || len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != int64(l.ID) {
			return 0, ErrFenced
		}
		return 0, ErrOwned
	}
	return uint64(r.Header.Revision), nil
}

// ReleaseChunk gives chunk up if token still owns it.
func (c *PodState) ReleaseChunk(ctx context.Context, l PodLease, chunk int, token uint64) error {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Txn(ctx).If(c.owns(chunk, token)).Then(clientv3.OpDelete(c.chunkKey(chunk))).Commit()
	if err != nil {
		return c.p.fail(fmt.Sprintf("release chunk %d", chunk), err)
	}
	if !r.Succeeded {
		return ErrFenced
	}
	return nil
}

// Publish sets key to ref if l is alive and still owns chunk with token,
// returning the previous value if any.
func (c *PodState) Publish(ctx context.Context, l PodLease, chunk int, token uint64, key string, ref ExtentRef) (ExtentRef, bool, error) {
	b, _ := json.Marshal(ref)
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Txn(ctx).If(c.alive(l), c.owns(chunk, token)).
		Then(clientv3.OpGet(c.catKey(key)), clientv3.OpPut(c.catKey(key), string(b))).Commit()
	if err != nil {
		return ExtentRef{}, false, c.p.fail("publish extent "+key, err)
	}
	if !r.Succeeded {
		return ExtentRef{}, false, ErrFenced
	}
	g := r.Responses[0].GetResponseRange()
	if g == nil || len(g.Kvs) == 0 {
		return ExtentRef{}, false, nil
	}
	var prev ExtentRef
	if err := json.Unmarshal(g.Kvs[0].Value, &prev); err != nil {
		return ExtentRef{}, false, nil
	}
	return prev, true, nil
}

// Unpublish deletes key if it still maps to ref (same ownership check).
func (c *PodState) Unpublish(ctx context.Context, l PodLease, chunk int, token uint64, key string, ref ExtentRef) error {
	b, _ := json.Marshal(ref)
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Txn(ctx).If(c.alive(l), c.owns(chunk, token),
		clientv3.Compare(clientv3.Value(c.catKey(key)), "=", string(b))).
		Then(clientv3.OpDelete(c.catKey(key))).Commit()
	if err != nil {
		return c.p.fail("unpublish extent "+key, err)
	}
	if r.Succeeded {
		return nil
	}
	// Either ownership is lost (fenced) or the key moved on (nothing to do).
	own, err := c.p.Client.Txn(ctx).If(c.alive(l), c.owns(chunk, token)).Commit()
	if err != nil {
		return c.p.fail("unpublish extent "+key, err)
	}
	if !own.Succeeded {
		return ErrFenced
	}
	return nil
}

// Lookup returns the extent key is published at (ErrNotFound if none).
func (c *PodState) Lookup(ctx context.Context, key string) (ExtentRef, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(ctx, c.catKey(key))
	if err != nil {
		return ExtentRef{}, c.p.fail("look up extent "+key, err)
	}
	if len(r.Kvs) == 0 {
		return ExtentRef{}, fmt.Errorf("extent %q: %w", key, ErrNotFound)
	}
	var ref ExtentRef
	if err := json.Unmarshal(r.Kvs[0].Value, &ref); err != nil {
		return ExtentRef{}, fmt.Errorf("corrupt pod catalog entry %s: %w", key, err)
	}
	return ref, nil
}
