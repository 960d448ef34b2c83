package control

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A pod's own catalog: where the hot sets of the cluster's snapshots sit in
// its CXL region, and how hot each snapshot is in this pod.
//
//	/aquifer/pods/<pod>/hot/<name>    Placement (JSON), written by the host that placed it
//	/aquifer/pods/<pod>/heat/<name>   Heat (JSON): restores in this pod, decayed
//
// Snapshots themselves are cluster-wide (/aquifer/snap/<name>); a pod
// places a hot set in its region when it publishes one or promotes one, and
// drops the placement when it demotes it.

// HotExtent is one extent of a placed hot set.
type HotExtent struct {
	Descriptor int    `json:"descriptor"`
	Gen        uint64 `json:"gen"`
	Token      uint64 `json:"token"`
	Len        uint64 `json:"len"`
}

// Placement is a pod's record of a snapshot's hot set in its CXL region:
// its extents, in hot-segment order (a hot set larger than a chunk spans
// several).
type Placement struct {
	Name string `json:"name"`
	Pod  string `json:"pod"`
	// Published identifies the snapshot version placed (its catalog
	// entry's publish time).
	Published time.Time   `json:"published"`
	Extents   []HotExtent `json:"extents"`
	// Seal authenticates every other field (opaque here, like
	// Snapshot.Seal).
	Seal string `json:"seal,omitempty"`
	// Rev is the etcd modification revision the record was read at.
	Rev int64 `json:"-"`
}

// Equal reports whether two placements name the same extents of the same
// version.
func (p *Placement) Equal(q *Placement) bool {
	if p == nil || q == nil || p.Name != q.Name || p.Pod != q.Pod || !p.Published.Equal(q.Published) || len(p.Extents) != len(q.Extents) {
		return false
	}
	for i := range p.Extents {
		if p.Extents[i] != q.Extents[i] {
			return false
		}
	}
	return true
}

// Heat is how much a pod restores a snapshot: a count of restores that
// decays with half-life HalfLife.
type Heat struct {
	Score float64   `json:"score"`
	At    time.Time `json:"at"`
	// Demoted marks a snapshot an operator demoted: it comes back only once
	// it is hot again.
	Demoted bool `json:"demoted,omitempty"`
}

// HalfLife is the decay of restore heat.
const HalfLife = 10 * time.Minute

// Now returns the heat decayed to t.
func (h Heat) Now(t time.Time) float64 {
	if h.At.IsZero() {
		return 0
	}
	return h.Score * math.Exp2(-t.Sub(h.At).Seconds()/HalfLife.Seconds())
}

func (c *PodState) placementKey(name string) string { return c.pre + "hot/" + name }
func (c *PodState) heatKey(name string) string      { return c.pre + "heat/" + name }

// Name is the pod's name.
func (c *PodState) Name() string {
	return strings.TrimSuffix(strings.TrimPrefix(c.pre, "/aquifer/pods/"), "/")
}

// PutPlacement records pl; with rev 0 only if the snapshot has no placement
// in this pod yet (else ErrExists), otherwise only if the record is still at
// rev.
func (c *PodState) PutPlacement(ctx context.Context, pl *Placement, rev int64) error {
	if err := ValidName(pl.Name); err != nil {
		return err
	}
	b, _ := json.Marshal(pl)
	k := c.placementKey(pl.Name)
	cmp := clientv3.Compare(clientv3.ModRevision(k), "=", rev)
	if rev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
	}
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Txn(ctx).If(cmp).Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return c.p.fail("record the placement of "+pl.Name, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("placement of %q in pod %s changed concurrently: %w", pl.Name, c.Name(), ErrExists)
	}
	return nil
}

// GetPlacement returns the snapshot's placement in this pod (ErrNotFound
// if it has none).
func (c *PodState) GetPlacement(ctx context.Context, name string) (*Placement, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(ctx, c.placementKey(name))
	if err != nil {
		return nil, c.p.fail("read the placement of "+name, err)
	}
	if len(r.Kvs) == 0 {
		return nil, fmt.Errorf("placement of %q in pod %s: %w", name, c.Name(), ErrNotFound)
	}
	return decodePlacement(name, r.Kvs[0].Value, r.Kvs[0].ModRevision)
}

// SnapshotRevAndPlacement reads, in one round trip and at one revision, the
// catalog entry's revision (Plane.SnapshotRev) and this pod's placement of
// it: what opening a snapshot for a restore needs from the control plane.
// The placement is nil (and err nil) when the pod holds none; ErrNotFound
// when the catalog has no such snapshot.
//
// The read is serializable: the etcd member answers from its own state,
// without a round of agreement among the members (which waits behind the
// raft loop: 1-40 ms measured when 8 restores arrive at once on 2 shared
// cores). What it may miss is a change committed in the last moments: a
// snapshot published just now is read again linearizably before it is
// called missing; a stale placement is caught by its publish time and by
// the CXL protocol's descriptor validation, and a stale revision only
// serves the version cached at it, which stays sealed and authenticated.
func (c *PodState) SnapshotRevAndPlacement(ctx context.Context, name string) (int64, *Placement, error) {
	if err := ValidName(name); err != nil {
		return 0, nil, err
	}
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	read := func(opts ...clientv3.OpOption) (*clientv3.TxnResponse, error) {
		return c.p.Client.Txn(ctx).Then(clientv3.OpGet(prefixSnap+name, append(opts, clientv3.WithKeysOnly())...),
			clientv3.OpGet(c.placementKey(name), opts...)).Commit()
	}
	r, err := read(clientv3.WithSerializable())
	if err == nil && len(r.Responses[0].GetResponseRange().GetKvs()) == 0 {
		r, err = read()
	}
	if err != nil {
		return 0, nil, c.p.fail(fmt.Sprintf("reading snapshot %q and its placement", name), err)
	}
	snap, place := r.Responses[0].GetResponseRange(), r.Responses[1].GetResponseRange()
	if snap == nil || len(snap.Kvs) == 0 {
		return 0, nil, fmt.Errorf("snapshot %q: %w", name, ErrNotFound)
	}
	if place == nil || len(place.Kvs) == 0 {
		return snap.Kvs[0].ModRevision, nil, nil
	}
	pl, err := decodePlacement(name, place.Kvs[0].Value, place.Kvs[0].ModRevision)
	return snap.Kvs[0].ModRevision, pl, err
}

func decodePlacement(name string, v []byte, rev int64) (*Placement, error) {
	var pl Placement
	if err := json.Unmarshal(v, &pl); err != nil {
		return nil, fmt.Errorf("placement of %q: corrupt record: %w", name, err)
	}
	pl.Name, pl.Rev = name, rev // a record is named by its key, never by its value
	return &pl, nil
}

// DeletePlacement removes the placement if it is still at rev (0: any).
func (c *PodState) DeletePlacement(ctx context.Context, name string, rev int64) error {
	k := c.placementKey(name)
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	txn := c.p.Client.Txn(ctx)
	if rev != 0 {
		txn = txn.If(clientv3.Compare(clientv3.ModRevision(k), "=", rev))
	}
	r, err := txn.Then(clientv3.OpDelete(k)).Commit()
	if err != nil {
		return c.p.fail("drop the placement of "+name, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("placement of %q in pod %s changed concurrently: %w", name, c.Name(), ErrExists)
	}
	return nil
}

// Placements returns every placement of this pod by name.
func (c *PodState) Placements(ctx context.Context) (map[string]*Placement, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(ctx, c.pre+"hot/", clientv3.WithPrefix())
	if err != nil {
		return nil, c.p.fail("list placements", err)
	}
	out := map[string]*Placement{}
	for _, kv := range r.Kvs {
		name := strings.TrimPrefix(string(kv.Key), c.pre+"hot/")
		if pl, err := decodePlacement(name, kv.Value, kv.ModRevision); err == nil {
			out[name] = pl
		}
	}
	return out, nil
}

// WatchPlacements calls fn with every change of this pod's placements
// (pl nil: deleted) until ctx ends.
func (c *PodState) WatchPlacements(ctx context.Context, fn func(name string, pl *Placement)) {
	prefix := c.pre + "hot/"
	go func() {
		for ctx.Err() == nil {
			for wr := range c.p.Client.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix()) {
				for _, ev := range wr.Events {
					name := strings.TrimPrefix(string(ev.Kv.Key), prefix)
					if ev.Type == clientv3.EventTypeDelete {
						fn(name, nil)
						continue
					}
					if pl, err := decodePlacement(name, ev.Kv.Value, ev.Kv.ModRevision); err == nil {
						fn(name, pl)
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
}

// Restored adds one restore to the snapshot's heat in this pod and returns
// the new heat.
func (c *PodState) Restored(ctx context.Context, name string, at time.Time) (Heat, error) {
	return c.RestoredN(ctx, name, at, 1)
}

// RestoredN records n restores of name at once (a host that counts its
// restores and writes them in batches), as Restored does one.
func (c *PodState) RestoredN(ctx context.Context, name string, at time.Time, n int) (Heat, error) {
	for attempt := 0; ; attempt++ {
		h, rev, err := c.heat(ctx, name)
		if err != nil {
			return Heat{}, err
		}
		h = Heat{Score: h.Now(at) + float64(n), At: at, Demoted: h.Demoted}
		ok, err := c.putHeat(ctx, name, h, rev)
		if err != nil || ok || attempt >= 8 {
			return h, err
		}
	}
}

// SetHeat replaces the snapshot's heat record (promotion clears Demoted,
// an operator's demotion sets it).
func (c *PodState) SetHeat(ctx context.Context, name string, h Heat) error {
	_, err := c.putHeat(ctx, name, h, -1)
	return err
}

func (c *PodState) heat(ctx context.Context, name string) (Heat, int64, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(ctx, c.heatKey(name))
	if err != nil {
		return Heat{}, 0, c.p.fail("read the heat of "+name, err)
	}
	var h Heat
	if len(r.Kvs) == 0 {
		return h, 0, nil
	}
	json.Unmarshal(r.Kvs[0].Value, &h)
	return h, r.Kvs[0].ModRevision, nil
}

// putHeat writes h if the record is at rev (-1: unconditionally).
func (c *PodState) putHeat(ctx context.Context, name string, h Heat, rev int64) (bool, error) {
	b, _ := json.Marshal(h)
	k := c.heatKey(name)
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	txn := c.p.Client.Txn(ctx)
	if rev >= 0 {
		txn = txn.If(clientv3.Compare(clientv3.ModRevision(k), "=", rev))
	}
	r, err := txn.Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return false, c.p.fail("record the heat of "+name, err)
	}
	return r.Succeeded, nil
}

// Heats returns the heat of every snapshot restored in this pod.
func (c *PodState) Heats(ctx context.Context) (map[string]Heat, error) {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	r, err := c.p.Client.Get(ctx, c.pre+"heat/", clientv3.WithPrefix())
	if err != nil {
		return nil, c.p.fail("read heats", err)
	}
	out := map[string]Heat{}
	for _, kv := range r.Kvs {
		var h Heat
		if json.Unmarshal(kv.Value, &h) == nil {
			out[strings.TrimPrefix(string(kv.Key), c.pre+"heat/")] = h
		}
	}
	return out, nil
}

// DropHeat forgets the snapshot's heat (it was removed).
func (c *PodState) DropHeat(ctx context.Context, name string) error {
	ctx, cancel := c.p.op(ctx)
	defer cancel()
	_, err := c.p.Client.Delete(ctx, c.heatKey(name))
	return c.p.fail("drop the heat of "+name, err)
}

// Coldest orders placed snapshots from the coldest (the first to demote)
// at t: lowest heat first, never-restored ones by publish time.
func Coldest(pls map[string]*Placement, heats map[string]Heat, t time.Time) []*Placement {
	out := make([]*Placement, 0, len(pls))
	for _, pl := range pls {
		out = append(out, pl)
	}
	sort.Slice(out, func(i, j int) bool {
		hi, hj := heats[out[i].Name].Now(t), heats[out[j].Name].Now(t)
		if hi != hj {
			return hi < hj
		}
		if !out[i].Published.Equal(out[j].Published) {
			return out[i].Published.Before(out[j].Published)
		}
		return out[i].Name < out[j].Name
	})
	return out
}
