package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/offheap"
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

// publishHot writes the hot segment into CXL: into a chunk this host owns,
// else one it acquires, else after evicting the pod's least recently
// restored hot set (retired by whichever host owns its chunk).
func (p *Pool) publishHot(ctx context.Context, name string, hot []byte) (pod.Ref, error) {
	m := p.cxl.Load()
	if m == nil {
		return pod.Ref{}, errNoCXL
	}
	if int64(len(hot)) > m.owner.Geometry().ChunkSize {
		return pod.Ref{}, fmt.Errorf("hot segment of %d bytes exceeds the region's %d-byte chunks", len(hot), m.owner.Geometry().ChunkSize)
	}
	p.cxlMu.Lock()
	defer p.cxlMu.Unlock()
	p.lastPub.Store(time.Now().UnixNano())
	defer func() { p.lastPub.Store(time.Now().UnixNano()) }()
	for attempt := 0; ; attempt++ {
		ref, err := m.owner.Publish(ctx, name, hot)
		if err == nil || !errors.Is(err, pod.ErrNoSpace) {
			return ref, err
		}
		if p.acquireFree(ctx, m) {
			continue
		}
		if attempt >= 16 {
			return pod.Ref{}, fmt.Errorf("CXL tier full after %d evictions: %w", attempt, err)
		}
		victim, err := p.evictForSpace(ctx, m, name)
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

// evictForSpace demotes the pod's least recently restored hot set other
// than keep: at once if this host owns its chunk, else by asking the owner
// and waiting (bounded) for a chunk to come free. Called with cxlMu held.
func (p *Pool) evictForSpace(ctx context.Context, m *membership, keep string) (string, error) {
	order, err := p.cfg.Plane.EvictionOrder(ctx)
	if err != nil {
		return "", err
	}
	owners, err := p.cfg.PodState.ChunkOwners(ctx)
	if err != nil {
		return "", err
	}
	per := m.owner.Geometry().DescPerChunk
	for _, s := range order {
		if s.Name == keep || s.Hot == nil {
			continue
		}
		if chunk := s.Hot.Descriptor / per; !m.owner.Owns(s.Hot.Descriptor) {
			if _, owned := owners[chunk]; !owned {
				// Its owner is gone (lease expired): take the chunk
				// over; its published extents stay readable.
				if err := m.owner.Acquire(ctx, chunk); err == nil {
					p.Counters.ChunksAcquired.Add(1)
				}
			}
		}
		if m.owner.Owns(s.Hot.Descriptor) {
			if err := p.evictLocal(ctx, m, s); err != nil {
				return "", err
			}
			m.owner.ReleaseEmpty(ctx)
			return s.Name, nil
		}
		// Another host owns the chunk: ask it, then wait for space.
		if err := p.cfg.PodState.RequestEviction(ctx, m.member, s.Name); err != nil {
			return "", err
		}
		p.Counters.EvictRequests.Add(1)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if p.acquireFree(ctx, m) {
				return s.Name, nil
			}
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		return "", fmt.Errorf("the owner of %s's CXL chunk did not free it within 5s", s.Name)
	}
	return "", errors.New("CXL tier full and no hot set to evict")
}

// evictLocal demotes s, whose extent lies in a chunk this host owns: the
// catalog entry drops its CXL placement first (new restores read the RDMA
// copy), then the extent is unpublished and reclaimed once no host can
// still be reading it. Called with cxlMu held.
func (p *Pool) evictLocal(ctx context.Context, m *membership, s *control.Snapshot) error {
	p.reseal(s, func(s *control.Snapshot) { s.Hot = nil })
	if err := p.cfg.Plane.UpdateSnapshot(ctx, s, nil); err != nil {
		return err
	}
	p.mu.Lock()
	if e, ok := p.cache[s.Name]; ok {
		e.hot.Store(nil)
	}
	p.mu.Unlock()
	if err := m.owner.Unpublish(ctx, s.Name); err != nil && !errors.Is(err, pod.ErrNotFound) {
		return err
	}
	if _, err := m.owner.Reclaim(ctx); err != nil {
		return err
	}
	p.Counters.Evicted.Add(1)
	return nil
}

// retireKey retires the extent of key if this host owns its chunk
// (removal of a snapshot). Other hosts' extents are retired by their
// owners' sweeps, which find them orphaned.
func (p *Pool) retireKey(ctx context.Context, key string) {
	m := p.cxl.Load()
	if m == nil {
		return
	}
	p.cxlMu.Lock()
	defer p.cxlMu.Unlock()
	if err := m.owner.Unpublish(ctx, key); err != nil && !errors.Is(err, pod.ErrNotFound) {
		p.log.Debug("retiring a removed snapshot's extent", "snapshot", key, "err", err)
	}
	m.owner.Reclaim(ctx)
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

// sweep, for the chunks this host owns: honours eviction requests, retires
// extents no catalog entry references any more (removed or replaced
// snapshots, publishes that died before their catalog entry), reclaims
// retired extents whose grace period is over and gives empty chunks back.
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
	snaps, err := p.cfg.Plane.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	byName := map[string]*control.Snapshot{}
	for _, s := range snaps {
		byName[s.Name] = s
	}
	p.cxlMu.Lock()
	defer p.cxlMu.Unlock()
	for _, name := range reqs {
		ref, ok := refs[name]
		s := byName[name]
		if !ok || s == nil || s.Hot == nil || !m.owner.Owns(ref.Desc) {
			if !ok || s == nil || s.Hot == nil {
				p.cfg.PodState.EvictionDone(ctx, name)
			}
			continue
		}
		if err := p.evictLocal(ctx, m, s); err != nil {
			return err
		}
		p.cfg.PodState.EvictionDone(ctx, name)
		p.log.Info("demoted a hot segment another host needed the space of", "snapshot", name)
	}
	// A publish writes the pod catalog before the snapshot entry: leave
	// this host's extents alone while one of its publishes may be between
	// the two.
	if time.Since(time.Unix(0, p.lastPub.Load())) > 5*p.cfg.Sweep+5*time.Second {
		if err := p.retireOrphans(ctx, m, refs, byName); err != nil {
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

// retireOrphans retires the extents of this host's chunks that no snapshot
// references: pod-catalog keys whose snapshot is gone or points elsewhere
// (removed, demoted or republished), and published extents no key names
// (a publish that died before its catalog write, or a key that moved to
// another host's extent). Called with cxlMu held.
func (p *Pool) retireOrphans(ctx context.Context, m *membership, refs map[string]control.ExtentRef, byName map[string]*control.Snapshot) error {
	named := map[pod.Ref]bool{}
	for key, ref := range refs {
		r := refToPod(ref)
		named[r] = true
		if !m.owner.Owns(ref.Desc) {
			continue
		}
		if s := byName[key]; s != nil && s.Hot != nil && s.Hot.Descriptor == ref.Desc && s.Hot.Gen == ref.Gen {
			continue
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
	place *control.HotPlacement
}

func (h *cxlHot) Name() string { return "cxl" }

func (h *cxlHot) With(ctx context.Context, fn func([]byte) error) error {
	if cur := h.e.hot.Load(); cur == nil || *cur != *h.place {
		return errEvicted
	}
	ref := pod.Ref{Desc: h.place.Descriptor, Gen: h.place.Gen, Token: h.place.Token, Len: uint32(h.place.Len)}
	return h.p.withReader(ctx, func(r *pod.Pod) error {
		_, err := r.Install(ref, func(addr uintptr, n int) error {
			return fn(offheap.At(addr, n))
		})
		return err
	})
}
