package pool

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/restore"
)

// The tiering policy of a pod (docs/operations.md, "a cluster of pods"):
//
//   - Every restore in a pod adds one to the snapshot's heat there, a count
//     that halves every control.HalfLife (10 minutes).
//   - A snapshot restored in a pod whose region does not hold its hot set
//     (published in another pod, or demoted here) is promoted in the
//     background right after that restore — its hot set read from the RDMA
//     copy, checked page by page against the image's digests, written into
//     this pod's region — if the region has room for it, or if it is hotter
//     than the coldest hot set placed here by PromoteMargin, which is then
//     demoted to make room. The next restore in the pod reads CXL.
//   - When publishing or promoting needs room, the coldest hot set (lowest
//     heat, never-restored ones oldest first) is demoted: its placement is
//     dropped, its extents retired, and it is served from its RDMA copy; it
//     comes back by the rule above once it is restored again.
//   - `aquifer pool demote NAME` demotes at once and marks it demoted: it
//     comes back only once its heat reaches ReheatHeat (restored again that
//     often within about a half-life), so an operator's decision is not
//     undone by the next restore. `aquifer pool promote NAME` promotes at
//     once, demoting the coldest hot sets as needed.
const (
	PromoteMargin = 1.5
	ReheatHeat    = 3
)

// errNotHotter: the policy keeps the snapshot on its RDMA copy.
var errNotHotter = errors.New("not hotter than what the region holds")

// maybePromote starts a background promotion of name after a restore with
// heat h, unless the pod already holds it or one is running.
func (p *Pool) maybePromote(name string, h control.Heat) {
	if p.cxl.Load() == nil {
		return
	}
	if h.Demoted && h.Now(time.Now()) < ReheatHeat {
		return
	}
	if _, busy := p.promos.LoadOrStore(name, true); busy {
		return
	}
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		defer p.promos.Delete(name)
		ctx, cancel := context.WithTimeout(p.ctx, 2*time.Minute)
		defer cancel()
		err := p.promote(ctx, name, false)
		switch {
		case err == nil, errors.Is(err, errNotHotter), errors.Is(err, control.ErrExists):
		case ctx.Err() != nil:
		default:
			p.Counters.PromoteFailures.Add(1)
			p.log.Warn("promoting a hot set into this pod's CXL region", "snapshot", name, "err", err)
		}
	}()
}

// Promote places name's hot set in this pod's region now (an operator's
// `aquifer pool promote`), demoting the coldest hot sets as needed.
func (p *Pool) Promote(ctx context.Context, name string) error {
	if err := restore.ValidName(name); err != nil {
		return err
	}
	if p.cxl.Load() == nil {
		_, why := p.CXLStatus()
		return restore.Mark(restore.ErrUnavailable, fmt.Errorf("promoting %q: %w (%s)", name, errNoCXL, why))
	}
	err := p.promote(ctx, name, true)
	if errors.Is(err, control.ErrExists) {
		return nil // already placed
	}
	return seamErr(err)
}

// Demote drops name's hot set from this pod's region (an operator's
// `aquifer pool demote`): restores read its RDMA copy until it is hot again.
func (p *Pool) Demote(ctx context.Context, name string) error {
	if err := restore.ValidName(name); err != nil {
		return err
	}
	if p.cfg.PodState == nil {
		return restore.Mark(restore.ErrInvalid, fmt.Errorf("demoting %q: this host has no CXL tier", name))
	}
	if _, err := p.cfg.Plane.GetSnapshot(ctx, name); err != nil {
		return seamErr(err)
	}
	pl, err := p.cfg.PodState.GetPlacement(ctx, name)
	if err != nil {
		return seamErr(err)
	}
	if err := p.cfg.PodState.DeletePlacement(ctx, name, pl.Rev); err != nil {
		return seamErr(err)
	}
	p.mu.Lock()
	if e, ok := p.cache[name]; ok {
		e.hot.Store(nil)
	}
	p.mu.Unlock()
	p.retireExtents(ctx, pl) // the other hosts' extents: their sweeps
	return seamErr(p.cfg.PodState.SetHeat(ctx, name, control.Heat{At: time.Now(), Demoted: true}))
}

// promote reads name's hot set from its RDMA copy, verifies every page and
// places it in this pod's region. Unless force, it makes room only by
// demoting hot sets colder than name's heat by PromoteMargin.
func (p *Pool) promote(ctx context.Context, name string, force bool) error {
	if !force && p.placedHere(ctx, name) {
		return control.ErrExists
	}
	cat, err := p.cfg.Plane.GetSnapshot(ctx, name)
	if err != nil {
		return err
	}
	if pl, err := p.cfg.PodState.GetPlacement(ctx, name); err == nil && pl.Published.Equal(cat.Published) {
		return control.ErrExists
	}
	e, err := p.entry(ctx, cat)
	if err != nil {
		return err
	}
	if e.fallback == nil {
		return nil // no hot pages
	}
	maxHeat := math.Inf(1)
	if !force {
		h, err := p.heats(ctx)
		if err != nil {
			return err
		}
		maxHeat = h[name].Now(time.Now()) / PromoteMargin
		if err := p.roomFor(ctx, name, cat.HotBytes, maxHeat); err != nil {
			return err
		}
	}
	var hot []byte
	err = e.fallback.With(ctx, func(seg restore.Segment) error {
		ps := uint64(e.img.PageSize())
		_, nhot, _ := e.img.Counts()
		hot = make([]byte, 0, nhot*ps)
		for i := uint64(0); i < nhot; i++ {
			pg := seg.Page(i, ps)
			if err := e.img.VerifyHotPage(i, pg); err != nil {
				return fmt.Errorf("copying the hot segment: %w", err)
			}
			hot = append(hot, pg...)
		}
		return nil
	})
	if err != nil {
		return err
	}
	pl, err := p.place(ctx, cat, hot, maxHeat)
	if err != nil {
		return err
	}
	p.mu.Lock()
	if ce, ok := p.cache[name]; ok && ce.published.Equal(pl.Published) {
		ce.hot.Store(pl)
	}
	p.mu.Unlock()
	h, _ := p.cfg.PodState.Restored(ctx, name, time.Now())
	h.Demoted, h.Score = false, max(h.Score-1, 0) // the promotion is not a restore
	p.cfg.PodState.SetHeat(ctx, name, h)
	p.Counters.Promoted.Add(1)
	p.log.Info("promoted a hot set into this pod's CXL region", "snapshot", name, "bytes", len(hot), "extents", len(pl.Extents))
	return nil
}

// placedHere says, without reading the catalog entry, whether the version
// of name this host last opened is the catalog's current one and is placed
// in this pod (its cached placement, kept current by the placement watch).
// Every heat write asks before a promotion: reading, unmarshalling and
// verifying the whole entry instead (5-10 ms of CPU for the captured
// corpus's, most of it their segments' page digests) cost the daemon as
// much as its pre-installs. A placement dropped a moment ago and not yet
// seen by the watch makes it say yes once: the next heat write promotes.
func (p *Pool) placedHere(ctx context.Context, name string) bool {
	p.mu.Lock()
	e := p.cache[name]
	p.mu.Unlock()
	if e == nil || e.hot.Load() == nil {
		return false
	}
	rev, err := p.cfg.Plane.SnapshotRev(ctx, name)
	return err == nil && rev == e.rev
}

// roomFor says whether the policy lets a hot set of n bytes in: the
// region has free chunks for it, or hot sets colder than maxHeat hold
// enough to demote (publishing then demotes them as it needs the room).
func (p *Pool) roomFor(ctx context.Context, name string, n uint64, maxHeat float64) error {
	m := p.cxl.Load()
	if m == nil {
		return errNoCXL
	}
	g := m.owner.Geometry()
	owners, err := p.cfg.PodState.ChunkOwners(ctx)
	if err != nil {
		return err
	}
	if free := g.Chunks - len(owners); uint64(free)*uint64(g.ChunkSize) >= n {
		return nil
	}
	pls, err := p.cfg.PodState.Placements(ctx)
	if err != nil {
		return err
	}
	var used uint64
	for _, pl := range pls {
		for _, x := range pl.Extents {
			used += x.Len
		}
	}
	if capacity := uint64(g.Chunks) * uint64(g.ChunkSize); used+n <= capacity {
		return nil // room inside owned chunks (publishing finds it, or demotes only colder ones)
	}
	heats, err := p.heats(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	var freed uint64
	for _, pl := range control.Coldest(pls, heats, now) {
		if heats[pl.Name].Now(now) >= maxHeat {
			break
		}
		for _, x := range pl.Extents {
			freed += x.Len
		}
		if freed >= n {
			return nil
		}
	}
	return errNotHotter
}
