package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	prefixSnap    = "/aquifer/snap/"
	prefixLRU     = "/aquifer/lru/"
	prefixHost    = "/aquifer/host/"
	prefixMemnode = "/aquifer/memnode/"
	prefixOwner   = "/aquifer/owner/"
)

// ErrNotFound is returned for a snapshot the catalog does not hold.
var ErrNotFound = errors.New("not found")

// ErrExists is returned when publishing a name that is taken.
var ErrExists = errors.New("already exists")

// ErrFenced is returned when a write is made with a stale fencing token.
var ErrFenced = errors.New("fencing token is stale (ownership lost)")

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidName checks a snapshot or member name.
func ValidName(n string) error {
	if !nameRE.MatchString(n) {
		return fmt.Errorf("invalid name %q: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", n)
	}
	return nil
}

// SegmentPlacement says where one immutable segment lives on memory nodes.
type SegmentPlacement struct {
	ID     string   `json:"id"`
	Nodes  []string `json:"nodes"`
	Len    uint64   `json:"len"`
	Digest uint64   `json:"digest"`
	// Kind is "meta" (the image metadata), "hot" (the hot segment's copy)
	// or "cold".
	Kind string `json:"kind"`
}

// Snapshot is one entry of the cluster catalog: a published snapshot,
// whose segments live on the cluster's memory nodes. Where its hot set is
// placed in each pod's CXL region is that pod's own record (Placement).
type Snapshot struct {
	Name string `json:"name"`
	// Header is the image header, opaque to the control plane.
	Header json.RawMessage `json:"header,omitempty"`
	// Segments lists every memory-node segment of the snapshot (memory
	// nodes authorize reads by it).
	Segments  []SegmentPlacement `json:"segments"`
	HotBytes  uint64             `json:"hot_bytes"`
	ColdBytes uint64             `json:"cold_bytes"`
	Published time.Time          `json:"published"`
	// Seal authenticates every other field (the pool's MAC under a key the
	// control plane does not hold); opaque to this package.
	Seal string `json:"seal,omitempty"`
	// Rev is the etcd modification revision the entry was read at.
	Rev int64 `json:"-"`
}

// PutSnapshot creates a catalog entry; it fails with ErrExists if the name
// is taken.
func (p *Plane) PutSnapshot(ctx context.Context, s *Snapshot) error {
	if err := ValidName(s.Name); err != nil {
		return err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	k := prefixSnap + s.Name
	ctx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return p.fail(fmt.Sprintf("recording snapshot %q in the catalog", s.Name), err)
	}
	if !r.Succeeded {
		return fmt.Errorf("snapshot %q: %w", s.Name, ErrExists)
	}
	return nil
}

// UpdateSnapshot replaces an entry if it has not changed since it was read
// (s.Rev); with a non-nil fence the update also requires that the fence's
// ownership still holds.
func (p *Plane) UpdateSnapshot(ctx context.Context, s *Snapshot, fence *Token) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	k := prefixSnap + s.Name
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", s.Rev)}
	if fence != nil {
		cmps = append(cmps, fence.cmp())
	}
	ctx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Txn(ctx).If(cmps...).Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return p.fail(fmt.Sprintf("updating snapshot %q in the catalog", s.Name), err)
	}
	if !r.Succeeded {
		if fence != nil {
			if ok, _ := p.fenceValid(ctx, fence); !ok {
				return ErrFenced
			}
		}
		return fmt.Errorf("snapshot %q changed concurrently; retry", s.Name)
	}
	return nil
}

// GetSnapshot reads one entry.
func (p *Plane) GetSnapshot(ctx context.Context, name string) (*Snapshot, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	ctx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Get(ctx, prefixSnap+name)
	if err != nil {
		return nil, p.fail(fmt.Sprintf("reading snapshot %q from the catalog", name), err)
	}
	if len(r.Kvs) == 0 {
		return nil, fmt.Errorf("snapshot %q: %w", name, ErrNotFound)
	}
	var s Snapshot
	if err := json.Unmarshal(r.Kvs[0].Value, &s); err != nil {
		return nil, fmt.Errorf("snapshot %q: corrupt catalog entry: %w", name, err)
	}
	s.Name = name // an entry is named by its key, whatever its value says
	s.Rev = r.Kvs[0].ModRevision
	return &s, nil
}

// SnapshotRev returns the revision at which a catalog entry last changed
// (its Rev), without reading the entry: a reader holding a verified copy
// of that revision needs nothing more. ErrNotFound if there is none. The
// read is serializable, as PodState.SnapshotRevAndPlacement's (whose
// comment says why), and linearizable again before an entry is called
// missing.
func (p *Plane) SnapshotRev(ctx context.Context, name string) (int64, error) {
	if err := ValidName(name); err != nil {
		return 0, err
	}
	ctx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Get(ctx, prefixSnap+name, clientv3.WithKeysOnly(), clientv3.WithSerializable())
	if err == nil && len(r.Kvs) == 0 {
		r, err = p.Client.Get(ctx, prefixSnap+name, clientv3.WithKeysOnly())
	}
	if err != nil {
		return 0, p.fail(fmt.Sprintf("reading snapshot %q from the catalog", name), err)
	}
	if len(r.Kvs) == 0 {
		return 0, fmt.Errorf("snapshot %q: %w", name, ErrNotFound)
	}
	return r.Kvs[0].ModRevision, nil
}

// ListSnapshots returns all entries sorted by name. Each is the caller's
// own copy; its Header and Segments may be shared with other callers' and
// must not be modified. An entry is decoded again only when its
// modification revision changed since the last listing (an etcd key's value
// at one revision never changes).
func (p *Plane) ListSnapshots(ctx context.Context) ([]*Snapshot, error) {
	ctx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Get(ctx, prefixSnap, clientv3.WithPrefix())
	if err != nil {
		return nil, p.fail("listing the catalog", err)
	}
	p.listed.Lock()
	prev := p.listed.m
	p.listed.Unlock()
	seen := make(map[string]*Snapshot, len(r.Kvs))
	out := make([]*Snapshot, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		name := string(kv.Key[len(prefixSnap):])
		s := prev[name]
		if s == nil || s.Rev != kv.ModRevision {
			s = new(Snapshot)
			if err := json.Unmarshal(kv.Value, s); err != nil {
				return nil, fmt.Errorf("corrupt catalog entry %s: %w", kv.Key, err)
			}
			s.Name, s.Rev = name, kv.ModRevision
		}
		seen[name] = s
		c := *s
		out = append(out, &c)
	}
	p.listed.Lock()
	p.listed.m = seen
	p.listed.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteSnapshot removes an entry (and its LRU stamp); ErrNotFound if absent.
func (p *Plane) DeleteSnapshot(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	ctx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Txn(ctx).Then(clientv3.OpDelete(prefixSnap+name), clientv3.OpDelete(prefixLRU+name)).Commit()
	if err != nil {
		return p.fail(fmt.Sprintf("deleting snapshot %q from the catalog", name), err)
	}
	if r.Responses[0].GetResponseDeleteRange().Deleted == 0 {
		return fmt.Errorf("snapshot %q: %w", name, ErrNotFound)
	}
	return nil
}

// WatchSnapshots calls fn with every change of a catalog entry (s is nil
// when the entry was deleted) until ctx ends. The watch survives etcd
// outages (the client resumes it); fn runs on the watch's goroutine.
func (p *Plane) WatchSnapshots(ctx context.Context, fn func(name string, s *Snapshot)) {
	go func() {
		for ctx.Err() == nil {
			wch := p.Client.Watch(clientv3.WithRequireLeader(ctx), prefixSnap, clientv3.WithPrefix())
			for wr := range wch {
				for _, ev := range wr.Events {
					name := string(ev.Kv.Key[len(prefixSnap):])
					if ev.Type == clientv3.EventTypeDelete {
						fn(name, nil)
						continue
					}
					var s Snapshot
					if json.Unmarshal(ev.Kv.Value, &s) != nil {
						continue
					}
					s.Name = name
					s.Rev = ev.Kv.ModRevision
					fn(name, &s)
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
}
