package pool

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
)

// membership is this host's identities on the pod's CXL region: the owner
// (publishes into chunks it owns, retires their extents) and the readers
// (one host slot each, so several restores read the tier at once; a
// pod.Pod is not safe for concurrent use).
type membership struct {
	member  *control.PodMember
	owner   *pod.Pod
	readers chan *pod.Pod
	all     []*pod.Pod
	users   sync.WaitGroup
}

// errNoCXL: this host has no CXL membership now (out of service, or
// rejoining after a lost lease); restores read the RDMA copy.
var errNoCXL = errors.New("CXL tier not available on this host")

// SetCXL gives the pool this host's identities on the region: owner first,
// then readers, all slots of member m. It replaces any previous membership.
func (p *Pool) SetCXL(m *control.PodMember, owner *pod.Pod, readers []*pod.Pod) {
	mb := &membership{member: m, owner: owner, readers: make(chan *pod.Pod, len(readers)+1), all: append([]*pod.Pod{owner}, readers...)}
	for _, r := range readers {
		mb.readers <- r
	}
	if len(readers) == 0 {
		mb.readers <- owner // reads then share the owner (under cxlMu)
	}
	old := p.cxl.Swap(mb)
	p.outage.Store(nil)
	if old != nil {
		p.retireMembership(old)
	}
}

// ClearCXL takes the CXL tier out of service on this host (why is logged
// and reported by CXLStatus): publishes go to RDMA only and restores read
// the RDMA copies until SetCXL is called again.
func (p *Pool) ClearCXL(why string) {
	p.outage.Store(&why)
	if old := p.cxl.Swap(nil); old != nil {
		p.log.Warn("CXL tier out of service on this host; restores read the RDMA copies", "why", why)
		p.retireMembership(old)
	}
}

// retireMembership closes a membership once no restore uses it (bounded:
// a fenced membership's reads fail fast anyway).
func (p *Pool) retireMembership(m *membership) {
	done := make(chan struct{})
	go func() { m.users.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.log.Warn("closing a CXL membership still in use after 10s")
	}
	p.cxlMu.Lock()
	defer p.cxlMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := len(m.all) - 1; i >= 0; i-- {
		m.all[i].Close(ctx)
	}
}

// CXLStatus reports whether this host serves from the CXL tier, and why
// not.
func (p *Pool) CXLStatus() (bool, string) {
	if p.cxl.Load() != nil {
		return true, ""
	}
	if w := p.outage.Load(); w != nil {
		return false, *w
	}
	return false, "no CXL region configured"
}

// OwnedChunks returns the chunks this host owns now.
func (p *Pool) OwnedChunks() []int {
	m := p.cxl.Load()
	if m == nil {
		return nil
	}
	p.cxlMu.Lock()
	defer p.cxlMu.Unlock()
	return m.owner.Owned()
}

// extentKey names piece i of a snapshot's hot set in the pod catalog.
func extentKey(name string, i int) string { return fmt.Sprintf("%s#%d", name, i) }

// keyExtent parses an extentKey.
func keyExtent(key string) (string, int, bool) {
	i := strings.LastIndexByte(key, '#')
	if i < 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(key[i+1:])
	return key[:i], n, err == nil
}

// place writes hot, the hot segment of snap, into this pod's region and
// records (sealed) where it is. A hot set larger than a chunk is stored as
// several extents. Room is made by demoting only hot sets colder than
// maxHeat (math.Inf(1): any).
func (p *Pool) place(ctx context.Context, snap *control.Snapshot, hot []byte, maxHeat float64) (*control.Placement, error) {
	refs, err := p.publishHot(ctx, snap.Name, hot, maxHeat)
	if err != nil {
		return nil, err
	}
	pl := &control.Placement{Name: snap.Name, Pod: p.podName(), Published: snap.Published}
	for _, r := range refs {
		pl.Extents = append(pl.Extents, control.HotExtent{Descriptor: r.Desc, Gen: r.Gen, Token: r.Token, Len: uint64(r.Len)})
	}
	p.sealPlacement(pl)
	if err := p.cfg.PodState.PutPlacement(ctx, pl, 0); err != nil {
		// Unrecorded extents are orphans: this host's sweep retires them.
		return nil, err
	}
	return pl, nil
}

// publishHot writes the hot segment into CXL as extents of at most a chunk:
// into chunks this host owns, else ones it acquires, else after demoting
// the pod's coldest hot sets (retired by whichever host owns their chunks).
// On failure the extents already written are retired.
func (p *Pool) publishHot(ctx context.Context, name string, hot []byte, maxHeat float64) ([]pod.Ref, error) {
	m := p.cxl.Load()
	if m == nil {
		return nil, errNoCXL
	}
	g := m.owner.Geometry()
	p.cxlMu.Lock()
	defer p.cxlMu.Unlock()
	p.lastPub.Store(time.Now().UnixNano())
	defer func() { p.lastPub.Store(time.Now().UnixNano()) }()
	var refs []pod.Ref
	for i, off := 0, 0; off < len(hot); i++ {
		n := min(len(hot)-off, int(g.ChunkSize))
		ref, err := p.publishExtent(ctx, m, name, extentKey(name, i), hot[off:off+n], maxHeat)
		if err != nil {
			for j := range refs {
				m.owner.Unpublish(ctx, extentKey(name, j))
			}
			return nil, err
		}
		refs = append(refs, ref)
		off += n
	}
	return refs, nil
}

// publishExtent publishes one extent, making room as needed. Called with
// cxlMu held.
func (p *Pool) publishExtent(ctx context.Context, m *membership, name, key string, data []byte, maxHeat float64) (pod.Ref, error) {
	for attempt := 0; ; attempt++ {
		ref, err := m.owner.Publish(ctx, key, data)
		if err == nil || !errors.Is(err, pod.ErrNoSpace) {
			return ref, err
		}
		if p.acquireFree(ctx, m) {
			continue
		}
		if attempt >= 16 {
			return pod.Ref{}, fmt.Errorf("CXL tier full after %d demotions: %w", attempt, err)
		}
		victim, err := p.evictForSpace(ctx, m, name, maxHeat)
		if err != nil {
			return pod.Ref{}, err
		}
		p.log.Info("CXL tier full: demoted a hot segment to the RDMA tier", "evicted", victim, "for", name)
	}
}

// acquireFree takes one chunk no live host owns. Called with cxlMu held.
func (p *Pool) acquireFree(ctx context.Context, m *membership) bool {
	owners, err := p.cfg.PodState.ChunkOwners(ctx)
	if err != nil {
		return false
	}
	for c := 0; c < m.owner.Geometry().Chunks; c++ {
		if _, taken := owners[c]; taken {
			continue
		}
		if err := m.owner.Acquire(ctx, c); err == nil {
			p.Counters.ChunksAcquired.Add(1)
			return true
		} else if !errors.Is(err, pod.ErrOwned) {
			p.log.Warn("acquiring a CXL chunk", "chunk", c, "err", err)
			return false
		}
	}
	return false
}

// owns reports whether this host owns every chunk of pl's extents, after
// taking over the chunks whose owner is gone (their published extents stay
// readable). Called with cxlMu held.
func (p *Pool) owns(ctx context.Context, m *membership, pl *control.Placement, owners map[int]int) bool {
	per := m.owner.Geometry().DescPerChunk
	all := true
	for _, x := range pl.Extents {
		if m.owner.Owns(x.Descriptor) {
			continue
		}
		if _, owned := owners[x.Descriptor/per]; !owned && m.owner.Acquire(ctx, x.Descriptor/per) == nil {
			p.Counters.ChunksAcquired.Add(1)
			continue
		}
		all = false
	}
	return all
}

// evictForSpace demotes the pod's coldest hot set other than keep: at once
// if this host owns its chunks (or takes them over from a dead owner), else
// by asking their owner and waiting (bounded) for a chunk to come free.
// Called with cxlMu held.
func (p *Pool) evictForSpace(ctx context.Context, m *membership, keep string, maxHeat float64) (string, error) {
	pls, err := p.cfg.PodState.Placements(ctx)
	if err != nil {
		return "", err
	}
	heats, err := p.heats(ctx)
	if err != nil {
		return "", err
	}
	owners, err := p.cfg.PodState.ChunkOwners(ctx)
	if err != nil {
		return "", err
	}
	now := time.Now()
	for _, pl := range control.Coldest(pls, heats, now) {
		if pl.Name == keep {
			continue
		}
		if heats[pl.Name].Now(now) >= maxHeat {
			break // the rest are hotter still
		}
		if p.owns(ctx, m, pl, owners) {
			if err := p.evictLocal(ctx, m, pl); err != nil {
				return "", err
			}
			m.owner.ReleaseEmpty(ctx)
			return pl.Name, nil
		}
		// Another host owns a chunk of it: ask it, then wait for space.
		if err := p.cfg.PodState.RequestEviction(ctx, m.member, pl.Name); err != nil {
			return "", err
		}
		p.Counters.EvictRequests.Add(1)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if p.acquireFree(ctx, m) {
				return pl.Name, nil
			}
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		return "", fmt.Errorf("the owner of %s's CXL chunk did not free it within 5s", pl.Name)
	}
	return "", errors.New("CXL tier full and no colder hot set to demote")
}

// evictLocal demotes pl: its placement goes first (new restores read the
// RDMA copy; hosts watching placements stop using it), then its extents in
// this host's chunks are unpublished and reclaimed once no host can still
// be reading them. Called with cxlMu held.
func (p *Pool) evictLocal(ctx context.Context, m *membership, pl *control.Placement) error {
	if err := p.cfg.PodState.DeletePlacement(ctx, pl.Name, pl.Rev); err != nil && !errors.Is(err, control.ErrNotFound) {
		return err
	}
	p.mu.Lock()
	if e, ok := p.cache[pl.Name]; ok {
		e.hot.Store(nil)
	}
	p.mu.Unlock()
	p.retireExtentsLocked(ctx, m, pl)
	if _, err := m.owner.Reclaim(ctx); err != nil {
		return err
	}
	p.Counters.Evicted.Add(1)
	return nil
}

// retireExtents retires the extents of pl that lie in this host's chunks
// (the others are retired by their owners' sweeps, which find them
// orphaned).
func (p *Pool) retireExtents(ctx context.Context, pl *control.Placement) {
	m := p.cxl.Load()
	if m == nil {
		return
	}
	p.cxlMu.Lock()
	defer p.cxlMu.Unlock()
	p.retireExtentsLocked(ctx, m, pl)
	m.owner.Reclaim(ctx)
}

func (p *Pool) retireExtentsLocked(ctx context.Context, m *membership, pl *control.Placement) {
	for i, x := range pl.Extents {
		if !m.owner.Owns(x.Descriptor) {
			continue
		}
		if err := m.owner.Unpublish(ctx, extentKey(pl.Name, i)); err != nil && !errors.Is(err, pod.ErrNotFound) {
			p.log.Debug("retiring a demoted extent", "snapshot", pl.Name, "extent", i, "err", err)
		}
	}
}

// sweepLoop runs the owner's housekeeping until ctx ends.
func (p *Pool) sweepLoop(ctx context.Context) {
	defer p.bg.Done()
	t := time.NewTicker(p.cfg.Sweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
		}
		if p.cfg.CheckRegion != nil && p.cxl.Load() != nil {
			if err := p.cfg.CheckRegion(); err != nil {
				p.ClearCXL(err.Error())
				continue
			}
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := p.sweep(sctx); err != nil && ctx.Err() == nil {
			p.log.Debug("CXL sweep", "err", err)
		}
		cancel()
	}
}

// sweep keeps this pod's placements and this host's chunks tidy: it drops
// placements of snapshots that were removed or republished (or that do not
// verify), honours eviction requests for hot sets in this host's chunks,
// retires extents of its chunks that no placement names (removed,
// demoted or republished snapshots, publishes that died before their
// placement), reclaims retired extents whose grace period is over and
// gives empty chunks back when another host needs room.
func (p *Pool) sweep(ctx context.Context) error {
	m := p.cxl.Load()
	if m == nil {
		return nil
	}
	reqs, err := p.cfg.PodState.EvictionRequests(ctx)
	if err != nil {
		return err
	}
	refs, err := p.cfg.PodState.Catalog(ctx)
	if err != nil {
		return err
	}
	pls, err := p.cfg.PodState.Placements(ctx)
	if err != nil {
		return err
	}
	snaps, err := p.cfg.Plane.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	live := map[string]*control.Snapshot{}
	for _, s := range snaps {
		live[s.Name] = s
	}
	for name, pl := range pls {
		if s := live[name]; s == nil || !s.Published.Equal(pl.Published) || p.verifyPlacement(pl) != nil {
			p.cfg.PodState.DeletePlacement(ctx, name, pl.Rev)
			delete(pls, name)
		}
	}
	p.cxlMu.Lock()
	defer p.cxlMu.Unlock()
	owners, err := p.cfg.PodState.ChunkOwners(ctx)
	if err != nil {
		return err
	}
	for _, name := range reqs {
		pl := pls[name]
		if pl == nil {
			p.cfg.PodState.EvictionDone(ctx, name)
			continue
		}
		if !p.owns(ctx, m, pl, owners) {
			continue // another host owns part of it
		}
		if err := p.evictLocal(ctx, m, pl); err != nil {
			return err
		}
		delete(pls, name)
		p.cfg.PodState.EvictionDone(ctx, name)
		p.log.Info("demoted a hot segment another host needed the space of", "snapshot", name)
	}
	// A publish writes the pod catalog before the placement: leave this
	// host's extents alone while one of its publishes may be between the
	// two.
	if time.Since(time.Unix(0, p.lastPub.Load())) > 5*p.cfg.Sweep+5*time.Second {
		if err := p.retireOrphans(ctx, m, refs, pls); err != nil {
			return err
		}
	}
	if _, err := m.owner.Reclaim(ctx); err != nil {
		return err
	}
	if len(reqs) > 0 {
		rel, err := m.owner.ReleaseEmpty(ctx)
		p.Counters.ChunksReleased.Add(uint64(len(rel)))
		return err
	}
	return nil
}

// retireOrphans retires the extents of this host's chunks that no placement
// names: pod-catalog keys whose placement is gone or points elsewhere, and
// published extents no key names (a publish that died before its catalog
// write, or a key that moved to another host's extent). Called with cxlMu
// held.
func (p *Pool) retireOrphans(ctx context.Context, m *membership, refs map[string]control.ExtentRef, pls map[string]*control.Placement) error {
	named := map[pod.Ref]bool{}
	for key, ref := range refs {
		r := refToPod(ref)
		named[r] = true
		if !m.owner.Owns(ref.Desc) {
			continue
		}
		if name, i, ok := keyExtent(key); ok {
			if pl := pls[name]; pl != nil && i < len(pl.Extents) && pl.Extents[i].Descriptor == ref.Desc && pl.Extents[i].Gen == ref.Gen {
				continue
			}
		}
		if err := m.owner.Unpublish(ctx, key); err != nil && !errors.Is(err, pod.ErrNotFound) {
			return err
		}
		p.Counters.OrphansRetired.Add(1)
	}
	for _, r := range m.owner.Extents() {
		if named[r] {
			continue
		}
		if err := m.owner.Retire(ctx, r); err != nil {
			return err
		}
		p.Counters.OrphansRetired.Add(1)
	}
	return nil
}

// withReader runs fn with one of this host's reader identities.
func (p *Pool) withReader(ctx context.Context, fn func(*pod.Pod) error) error {
	m := p.cxl.Load()
	if m == nil {
		return errNoCXL
	}
	m.users.Add(1)
	defer m.users.Done()
	var r *pod.Pod
	select {
	case r = <-m.readers:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { m.readers <- r }()
	if r == m.owner {
		p.cxlMu.Lock()
		defer p.cxlMu.Unlock()
	}
	return fn(r)
}

// cxlHot serves the hot segment straight from the pod's CXL region, at the
// placement resolved when the VM was prepared.
type cxlHot struct {
	p     *Pool
	e     *entry
	place *control.Placement
}

func (h *cxlHot) Name() string { return "cxl" }

func (h *cxlHot) With(ctx context.Context, fn func(restore.Segment) error) error {
	if cur := h.e.hot.Load(); cur == nil || !cur.Equal(h.place) {
		return errEvicted
	}
	refs := make([]pod.Ref, len(h.place.Extents))
	for i, x := range h.place.Extents {
		refs[i] = pod.Ref{Desc: x.Descriptor, Gen: x.Gen, Token: x.Token, Len: uint32(x.Len)}
	}
	return h.p.withReader(ctx, func(r *pod.Pod) error {
		// The consumer checks every page against the image's digests
		// before it uses it (restore.HotSource), so the pod does not hash
		// the extents again: a digest mismatch is its failed check, and
		// the read is retried under the protocol (a stale or torn read on
		// a non-coherent device), then falls back.
		_, err := r.InstallManyChecked(refs, func(addrs []uintptr, lens []int) error {
			seg := make(restore.Segment, len(addrs))
			for i := range addrs {
				seg[i] = offheap.At(addrs[i], lens[i])
			}
			if err := fn(seg); errors.Is(err, snapimage.ErrDigest) {
				return fmt.Errorf("%w: %w", pod.ErrStale, err)
			} else {
				return err
			}
		})
		return err
	})
}
