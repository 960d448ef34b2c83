package control

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// What memory nodes read from the control plane: which segments the
// catalog references (to authorize reads and deletes) and which memory
// nodes are registered (for hosts whose node list follows membership).

// FormatSegmentID is how a catalog entry names a memory-node segment
// (SegmentPlacement.ID): the rdma.SegmentID as 16 lower-case hex digits.
func FormatSegmentID(id uint64) string { return fmt.Sprintf("%016x", id) }

// ParseSegmentID reads a SegmentPlacement.ID.
func ParseSegmentID(s string) (uint64, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("segment ID %q: want 16 hex digits", s)
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("segment ID %q: %w", s, err)
	}
	return v, nil
}

// SegmentIndex is a live view of the memory-node segments that published
// snapshots list (Snapshot.Segments): read in full at start and by
// Refresh, kept current by a watch from the revision it was read at. It
// reads only the segment lists of entries, not their seals (a memory node
// does not hold the pod secret).
type SegmentIndex struct {
	p      *Plane
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.RWMutex
	snaps  map[string][]segRef       // entry → the segments it lists
	refs   map[uint64]int            // segment → entries listing it
	on     map[uint64]map[string]int // segment → node address → entries listing it there ("" : no node named)
	legacy map[string]bool           // entries that list no segments
	rev    int64                     // etcd revision the view reflects
	self   []string                  // this node's addresses (SetSelf)
}

type segRef struct {
	id    uint64
	nodes []string
}

// entrySegments is the part of a catalog entry the index reads.
type entrySegments struct {
	Segments []struct {
		ID    string   `json:"id"`
		Nodes []string `json:"nodes"`
	} `json:"segments"`
}

// WatchSegmentIndex reads the catalog's segment lists and keeps them
// current until Close.
func (p *Plane) WatchSegmentIndex(ctx context.Context) (*SegmentIndex, error) {
	x := &SegmentIndex{p: p, done: make(chan struct{})}
	if err := x.Refresh(ctx); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.Background())
	x.cancel = cancel
	go x.watch(wctx)
	return x, nil
}

// Close stops the watch.
func (x *SegmentIndex) Close() {
	x.cancel()
	<-x.done
}

func (x *SegmentIndex) parse(name string, v []byte) (ids []segRef, legacy bool) {
	var e entrySegments
	if err := json.Unmarshal(v, &e); err != nil {
		x.p.logger().Warn("catalog entry is not JSON; its segments are not counted as referenced", "snapshot", name, "err", err)
		return nil, false
	}
	if len(e.Segments) == 0 {
		return nil, true
	}
	for _, s := range e.Segments {
		id, err := ParseSegmentID(s.ID)
		if err != nil {
			x.p.logger().Warn("catalog entry names a segment badly; not counted as referenced", "snapshot", name, "err", err)
			continue
		}
		ids = append(ids, segRef{id, s.Nodes})
	}
	return ids, false
}

// Refresh reads the whole catalog again; the view then reflects etcd at
// least as of the call.
func (x *SegmentIndex) Refresh(ctx context.Context) error {
	ctx, cancel := x.p.op(ctx)
	defer cancel()
	r, err := x.p.Client.Get(ctx, prefixSnap, clientv3.WithPrefix())
	if err != nil {
		return x.p.fail("read the catalog's segment lists", err)
	}
	snaps, legacy := map[string][]segRef{}, map[string]bool{}
	refs, on := map[uint64]int{}, map[uint64]map[string]int{}
	for _, kv := range r.Kvs {
		name := string(kv.Key[len(prefixSnap):])
		if ValidName(name) != nil {
			continue // not an entry (state kept below an entry's key)
		}
		ids, old := x.parse(name, kv.Value)
		if old {
			legacy[name] = true
		}
		snaps[name] = ids
		for _, sr := range ids {
			count(refs, on, sr, 1)
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if r.Header.Revision >= x.rev {
		x.snaps, x.refs, x.on, x.legacy, x.rev = snaps, refs, on, legacy, r.Header.Revision
	}
	return nil
}

// count adds d to segment sr's references, in total and per node.
func count(refs map[uint64]int, on map[uint64]map[string]int, sr segRef, d int) {
	if refs[sr.id] += d; refs[sr.id] <= 0 {
		delete(refs, sr.id)
	}
	nodes := sr.nodes
	if len(nodes) == 0 {
		nodes = []string{""}
	}
	m := on[sr.id]
	if m == nil {
		m = map[string]int{}
		on[sr.id] = m
	}
	for _, n := range nodes {
		if m[n] += d; m[n] <= 0 {
			delete(m, n)
		}
	}
	if len(m) == 0 {
		delete(on, sr.id)
	}
}

// apply records one entry's change at revision rev.
func (x *SegmentIndex) apply(name string, v []byte, deleted bool, rev int64) {
	var ids []segRef
	var old bool
	if !deleted {
		ids, old = x.parse(name, v)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if rev <= x.rev {
		return // a refresh already saw it
	}
	x.rev = rev // events arrive in revision order
	for _, sr := range x.snaps[name] {
		count(x.refs, x.on, sr, -1)
	}
	delete(x.snaps, name)
	delete(x.legacy, name)
	if !deleted {
		x.snaps[name] = ids
		for _, sr := range ids {
			count(x.refs, x.on, sr, 1)
		}
		if old {
			x.legacy[name] = true
		}
	}
}

func (x *SegmentIndex) watch(ctx context.Context) {
	defer close(x.done)
	for ctx.Err() == nil {
		x.mu.RLock()
		from := x.rev + 1
		x.mu.RUnlock()
		wch := x.p.Client.Watch(clientv3.WithRequireLeader(ctx), prefixSnap, clientv3.WithPrefix(), clientv3.WithRev(from))
		for wr := range wch {
			if err := wr.Err(); err != nil {
				x.p.logger().Warn("catalog watch interrupted; reading the catalog again", "err", err)
				break
			}
			for _, ev := range wr.Events {
				if name := string(ev.Kv.Key[len(prefixSnap):]); ValidName(name) == nil {
					x.apply(name, ev.Kv.Value, ev.Type == clientv3.EventTypeDelete, ev.Kv.ModRevision)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		if err := x.Refresh(ctx); err != nil {
			x.p.logger().Debug("re-reading the catalog after the watch ended", "err", err)
		}
	}
}

// SetSelf names the addresses under which entries list this memory node
// (its registered address). Until it is called, every listed segment
// counts as listed here.
func (x *SegmentIndex) SetSelf(addrs ...string) {
	x.mu.Lock()
	x.self = append([]string(nil), addrs...)
	x.mu.Unlock()
}

// Lookup reports whether a published snapshot lists segment id, and
// whether one lists it on this node (SetSelf; an entry that names no node
// for it counts as here); complete is false while some entries list no
// segments at all (published before entries listed them).
func (x *SegmentIndex) Lookup(id uint64) (listed, here, complete bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	listed, complete = x.refs[id] > 0, len(x.legacy) == 0
	if !listed {
		return false, false, complete
	}
	on := x.on[id]
	here = x.self == nil || on[""] > 0
	for _, a := range x.self {
		here = here || on[a] > 0
	}
	return listed, here, complete
}

// Counts returns the entries, distinct referenced segments and entries
// without a segment list in the view.
func (x *SegmentIndex) Counts() (entries, segments, legacy int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.snaps), len(x.refs), len(x.legacy)
}

// WatchMemNodes calls fn with the registered memory nodes now and after
// every change of their registrations, until ctx ends. The watch
// survives etcd outages; fn runs on the watch's goroutine.
func (p *Plane) WatchMemNodes(ctx context.Context, fn func([]Member)) {
	go func() {
		for ctx.Err() == nil {
			rev, err := p.listMemNodes(ctx, fn)
			if err == nil {
				wch := p.Client.Watch(clientv3.WithRequireLeader(ctx), prefixMemnode, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
				for wr := range wch {
					if wr.Err() != nil {
						break
					}
					if len(wr.Events) > 0 {
						if _, err := p.listMemNodes(ctx, fn); err != nil {
							break
						}
					}
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
}

func (p *Plane) listMemNodes(ctx context.Context, fn func([]Member)) (int64, error) {
	octx, cancel := p.op(ctx)
	defer cancel()
	r, err := p.Client.Get(octx, prefixMemnode, clientv3.WithPrefix())
	if err != nil {
		return 0, p.fail("list memory nodes", err)
	}
	out := make([]Member, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		var m Member
		if err := json.Unmarshal(kv.Value, &m); err != nil {
			p.logger().Warn("corrupt memory-node registration ignored", "key", string(kv.Key), "err", err)
			continue
		}
		out = append(out, m)
	}
	fn(out)
	return r.Header.Revision, nil
}
