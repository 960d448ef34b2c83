package control

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/aquifer-pool/aquifer/cxl/pod"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// PodCoordinator implements the CXL coherence protocol's control plane
// (pod.Coordinator) on etcd, for one pod:
//
//	/aquifer/pods/<pod>/hosts/<host>    leased; its create revision is the host's Lease.ID
//	/aquifer/pods/<pod>/chunks/<chunk>  "<host>/<lease>", leased by the owner; its create revision is the fencing token
//	/aquifer/pods/<pod>/catalog/<key>   pod.Ref (JSON)
//
// Chunk keys are attached to the owner's etcd lease, so a host whose lease
// expires loses its chunks at once; every publish is a transaction
// conditioned on the host key and the chunk key still carrying the
// revisions the host was handed.
type PodCoordinator struct {
	p    *Plane
	pre  string
	ttl  int64
	mu   sync.Mutex
	lids map[uint64]clientv3.LeaseID // Lease.ID → etcd lease
	stop map[uint64]context.CancelFunc
}

// NewPodCoordinator returns the coordinator of pod name.
func (p *Plane) NewPodCoordinator(name string, ttlSeconds int64) (*PodCoordinator, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if ttlSeconds <= 0 {
		ttlSeconds = 10
	}
	return &PodCoordinator{p: p, pre: "/aquifer/pods/" + name + "/", ttl: ttlSeconds,
		lids: map[uint64]clientv3.LeaseID{}, stop: map[uint64]context.CancelFunc{}}, nil
}

func (c *PodCoordinator) hostKey(h int) string  { return c.pre + "hosts/" + strconv.Itoa(h) }
func (c *PodCoordinator) chunkKey(n int) string { return c.pre + "chunks/" + strconv.Itoa(n) }
func (c *PodCoordinator) catKey(k string) string {
	return c.pre + "catalog/" + k
}

// Join implements pod.Coordinator.
func (c *PodCoordinator) Join(ctx context.Context, host int) (pod.Lease, error) {
	l, err := c.p.Client.Grant(ctx, c.ttl)
	if err != nil {
		return pod.Lease{}, fmt.Errorf("control: pod lease: %w", err)
	}
	r, err := c.p.Client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(c.hostKey(host)), "=", 0)).
		Then(clientv3.OpPut(c.hostKey(host), strconv.FormatInt(int64(l.ID), 10), clientv3.WithLease(l.ID))).Commit()
	if err != nil {
		c.p.Client.Revoke(context.Background(), l.ID)
		return pod.Lease{}, err
	}
	if !r.Succeeded {
		c.p.Client.Revoke(context.Background(), l.ID)
		return pod.Lease{}, fmt.Errorf("control: pod host slot %d is held by a live host", host)
	}
	kctx, cancel := context.WithCancel(context.Background())
	ch, err := c.p.Client.KeepAlive(kctx, l.ID)
	if err != nil {
		cancel()
		return pod.Lease{}, err
	}
	go func() {
		for range ch {
		}
	}()
	ls := pod.Lease{Host: host, ID: uint64(r.Header.Revision)}
	c.mu.Lock()
	c.lids[ls.ID], c.stop[ls.ID] = l.ID, cancel
	c.mu.Unlock()
	return ls, nil
}

// Leave implements pod.Coordinator.
func (c *PodCoordinator) Leave(ctx context.Context, l pod.Lease) error {
	c.mu.Lock()
	lid, ok := c.lids[l.ID]
	if cancel := c.stop[l.ID]; cancel != nil {
		cancel()
	}
	delete(c.lids, l.ID)
	delete(c.stop, l.ID)
	c.mu.Unlock()
	if !ok {
		return pod.ErrFenced
	}
	_, err := c.p.Client.Revoke(ctx, lid)
	return err
}

// Live implements pod.Coordinator.
func (c *PodCoordinator) Live(ctx context.Context) ([]pod.Lease, error) {
	r, err := c.p.Client.Get(ctx, c.pre+"hosts/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	var out []pod.Lease
	for _, kv := range r.Kvs {
		h, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), c.pre+"hosts/"))
		if err != nil {
			continue
		}
		out = append(out, pod.Lease{Host: h, ID: uint64(kv.CreateRevision)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

func (c *PodCoordinator) alive(l pod.Lease) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(c.hostKey(l.Host)), "=", int64(l.ID))
}

func (c *PodCoordinator) owns(chunk int, token uint64) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(c.chunkKey(chunk)), "=", int64(token))
}

// AcquireChunk implements pod.Coordinator.
func (c *PodCoordinator) AcquireChunk(ctx context.Context, l pod.Lease, chunk int) (uint64, error) {
	c.mu.Lock()
	lid, ok := c.lids[l.ID]
	c.mu.Unlock()
	if !ok {
		return 0, pod.ErrFenced
	}
	k := c.chunkKey(chunk)
	r, err := c.p.Client.Txn(ctx).If(c.alive(l), clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, fmt.Sprintf("%d/%d", l.Host, l.ID), clientv3.WithLease(lid))).
		Else(clientv3.OpGet(c.hostKey(l.Host))).Commit()
	if err != nil {
		return 0, err
	}
	if !r.Succeeded {
		if g := r.Responses[0].GetResponseRange(); g == nil || len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != int64(l.ID) {
			return 0, pod.ErrFenced
		}
		return 0, pod.ErrOwned
	}
	return uint64(r.Header.Revision), nil
}

// ReleaseChunk implements pod.Coordinator.
func (c *PodCoordinator) ReleaseChunk(ctx context.Context, l pod.Lease, chunk int, token uint64) error {
	r, err := c.p.Client.Txn(ctx).If(c.owns(chunk, token)).Then(clientv3.OpDelete(c.chunkKey(chunk))).Commit()
	if err != nil {
		return err
	}
	if !r.Succeeded {
		return pod.ErrFenced
	}
	return nil
}

// Publish implements pod.Coordinator.
func (c *PodCoordinator) Publish(ctx context.Context, l pod.Lease, chunk int, token uint64, key string, ref pod.Ref) (pod.Ref, bool, error) {
	b, _ := json.Marshal(ref)
	r, err := c.p.Client.Txn(ctx).If(c.alive(l), c.owns(chunk, token)).
		Then(clientv3.OpGet(c.catKey(key)), clientv3.OpPut(c.catKey(key), string(b))).Commit()
	if err != nil {
		return pod.Ref{}, false, err
	}
	if !r.Succeeded {
		return pod.Ref{}, false, pod.ErrFenced
	}
	g := r.Responses[0].GetResponseRange()
	if g == nil || len(g.Kvs) == 0 {
		return pod.Ref{}, false, nil
	}
	var prev pod.Ref
	if err := json.Unmarshal(g.Kvs[0].Value, &prev); err != nil {
		return pod.Ref{}, false, nil
	}
	return prev, true, nil
}

// Unpublish implements pod.Coordinator.
func (c *PodCoordinator) Unpublish(ctx context.Context, l pod.Lease, chunk int, token uint64, key string, ref pod.Ref) error {
	b, _ := json.Marshal(ref)
	r, err := c.p.Client.Txn(ctx).If(c.alive(l), c.owns(chunk, token),
		clientv3.Compare(clientv3.Value(c.catKey(key)), "=", string(b))).
		Then(clientv3.OpDelete(c.catKey(key))).Commit()
	if err != nil {
		return err
	}
	if r.Succeeded {
		return nil
	}
	// Either ownership is lost (fenced) or the key moved on (nothing to do).
	own, err := c.p.Client.Txn(ctx).If(c.alive(l), c.owns(chunk, token)).Commit()
	if err != nil {
		return err
	}
	if !own.Succeeded {
		return pod.ErrFenced
	}
	return nil
}

// Lookup implements pod.Coordinator.
func (c *PodCoordinator) Lookup(ctx context.Context, key string) (pod.Ref, error) {
	r, err := c.p.Client.Get(ctx, c.catKey(key))
	if err != nil {
		return pod.Ref{}, err
	}
	if len(r.Kvs) == 0 {
		return pod.Ref{}, pod.ErrNotFound
	}
	var ref pod.Ref
	if err := json.Unmarshal(r.Kvs[0].Value, &ref); err != nil {
		return pod.Ref{}, fmt.Errorf("control: corrupt pod catalog entry %s: %w", key, err)
	}
	return ref, nil
}

var _ pod.Coordinator = (*PodCoordinator)(nil)
