package pool

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/restore"
)

// The memory tier manages itself: one host of the cluster at a time (the
// holder of the "memtier" ownership in the control plane; another takes
// over when it dies) looks after every snapshot's segments on the memory
// nodes:
//
//   - a memory node whose registration has been gone for DeadAfter is
//     declared dead, and every segment that had a replica on it is copied
//     from a surviving replica to another node, back to the configured
//     redundancy (the catalog entry is rewritten, resealed, with the new
//     replica list; the immutable metadata object is not);
//   - a node being drained (`aquifer memnode drain ADDR`) is treated the
//     same way while it still serves, and once no entry references it
//     its copies are deleted and the drain is marked done.
//
// The bound on re-replication after a node dies is DeadAfter plus one
// Interval plus the time to copy its share of the segments (measured and
// reported in docs/operations.md).

// MemTierConfig tunes the memory tier's housekeeping.
type MemTierConfig struct {
	// Interval between rounds (default 2s).
	Interval time.Duration
	// DeadAfter is how long a memory node referenced by the catalog must
	// be missing from the control plane's membership to be declared dead
	// (default 10s).
	DeadAfter time.Duration
	// GCInterval between orphan sweeps (memgc.go; default 1m).
	GCInterval time.Duration
	// OrphanGrace is how long a segment no catalog entry lists is left
	// alone after a node stored it (default 10m).
	OrphanGrace time.Duration
}

// MemTierStats counts the housekeeping.
type MemTierStats struct {
	Rounds, SegmentsRepaired, EntriesRewritten, DrainsDone, RepairErrors atomic.Int64
	// OrphansDeleted and OrphanBytesDeleted count segments no catalog
	// entry listed, collected by the sweep; OrphanErrors its failed
	// deletes (retried next sweep).
	OrphansDeleted, OrphanBytesDeleted, OrphanErrors atomic.Int64
	// Leader is 1 while this host looks after the memory tier.
	Leader atomic.Int64
	// LastRepairNS is how long the last round that repaired anything took.
	LastRepairNS atomic.Int64
}

// memTierLoop competes for the memory tier's leadership and runs its
// rounds while it holds it.
func (p *Pool) memTierLoop(ctx context.Context) {
	defer p.bg.Done()
	host, _ := os.Hostname()
	holder := fmt.Sprintf("%s-%d", host, os.Getpid())
	for ctx.Err() == nil {
		tok, err := p.cfg.Plane.Acquire(ctx, "memtier", holder, 10)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		p.MemTier.Leader.Store(1)
		p.log.Info("this host looks after the memory tier (re-replication, drains)")
		p.memTierLead(ctx, tok)
		p.MemTier.Leader.Store(0)
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		p.cfg.Plane.Release(rctx, tok)
		cancel()
	}
}

func (p *Pool) memTierLead(ctx context.Context, tok *control.Token) {
	t := time.NewTicker(p.cfg.MemTier.Interval)
	defer t.Stop()
	missing := map[string]time.Time{}
	p.gcAt = time.Now() // the first sweep one GCInterval after taking the lead
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if ok, err := p.cfg.Plane.Valid(ctx, tok); err == nil && !ok {
			return // lost the leadership (lease expired)
		}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := p.memTierRound(rctx, missing); err != nil && ctx.Err() == nil {
			p.log.Warn("memory tier round", "err", err)
		}
		cancel()
	}
}

// memTierRound declares nodes dead, repairs what they held and progresses
// drains.
func (p *Pool) memTierRound(ctx context.Context, missing map[string]time.Time) error {
	p.MemTier.Rounds.Add(1)
	members, err := p.cfg.Plane.MemNodes(ctx)
	if err != nil {
		return err
	}
	alive := map[string]bool{}
	for _, m := range members {
		alive[m.Addr] = true
	}
	drains, err := p.cfg.Plane.Drains(ctx)
	if err != nil {
		return err
	}
	snaps, err := p.cfg.Plane.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	referenced := listedOn(snaps)
	if now.Sub(p.gcAt) >= p.cfg.MemTier.GCInterval {
		p.gcAt = now
		p.memTierGC(ctx, snaps, referenced, members)
	}
	drop := map[rdma.NodeID]bool{}
	for n := range referenced {
		if alive[n] {
			delete(missing, n)
			continue
		}
		if _, ok := missing[n]; !ok {
			missing[n] = now
			p.log.Warn("a memory node the catalog references is not registered; declared dead if it stays away", "node", n, "after", p.cfg.MemTier.DeadAfter)
		}
		if now.Sub(missing[n]) >= p.cfg.MemTier.DeadAfter {
			drop[rdma.NodeID(n)] = true
		}
	}
	for n, state := range drains {
		if state == "pending" {
			drop[rdma.NodeID(n)] = true
		}
	}
	if len(drop) == 0 {
		return nil
	}
	t0 := time.Now()
	repaired := 0
	for _, s := range snaps {
		n, err := p.repairEntry(ctx, s, drop, drains)
		repaired += n
		if err != nil {
			p.MemTier.RepairErrors.Add(1)
			p.log.Warn("re-replicating a snapshot's segments", "snapshot", s.Name, "err", err)
		}
	}
	if repaired > 0 {
		p.MemTier.LastRepairNS.Store(int64(time.Since(t0)))
		p.log.Info("memory tier repaired", "segments", repaired, "lost_or_draining", len(drop), "took", time.Since(t0).Round(time.Millisecond))
	}
	return p.finishDrains(ctx, drains)
}

// repairEntry re-replicates every segment of s with a copy on a dropped
// node and rewrites the entry. It returns the segments repaired.
func (p *Pool) repairEntry(ctx context.Context, s *control.Snapshot, drop map[rdma.NodeID]bool, drains map[string]string) (int, error) {
	if p.verify(s) != nil {
		return 0, nil // not ours to rewrite (refused on every read anyway)
	}
	var h header
	if err := json.Unmarshal(s.Header, &h); err != nil {
		return 0, err
	}
	repaired := 0
	var firstErr error
	type copyOn struct {
		node rdma.NodeID
		id   rdma.SegmentID
	}
	var moved []copyOn // copies on draining nodes to delete once the entry no longer names them
	for _, o := range []*rdma.Object{h.Meta, h.HotObj, h.ColdObj} {
		if o == nil {
			continue
		}
		for i, seg := range o.Segs {
			ns, changed, err := p.cfg.RDMA.Rereplicate(ctx, seg, func(n rdma.NodeID) bool { return drop[n] })
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if changed {
				for _, r := range seg.Replicas {
					if drains[string(r.Node)] == "pending" {
						moved = append(moved, copyOn{r.Node, seg.ID})
					}
				}
				o.Segs[i] = ns
				repaired++
			}
		}
	}
	if repaired == 0 {
		return 0, firstErr
	}
	hb, err := json.Marshal(h)
	if err != nil {
		return 0, err
	}
	s.Header, s.Segments = hb, segmentsOf(h)
	p.seal(s)
	if err := p.cfg.Plane.UpdateSnapshot(ctx, s, nil); err != nil {
		return 0, err // changed meanwhile: the next round tries again
	}
	p.MemTier.SegmentsRepaired.Add(int64(repaired))
	p.MemTier.EntriesRewritten.Add(1)
	for _, c := range moved {
		if err := p.cfg.RDMA.DeleteOn(ctx, c.node, c.id); err != nil {
			p.log.Debug("deleting a drained copy", "node", c.node, "segment", fmt.Sprintf("%016x", uint64(c.id)), "err", err)
		}
	}
	return repaired, firstErr
}

// finishDrains marks a drain done once no entry references the node any
// more, deleting the copies it still holds.
func (p *Pool) finishDrains(ctx context.Context, drains map[string]string) error {
	pending := false
	for _, state := range drains {
		pending = pending || state == "pending"
	}
	if !pending {
		return nil
	}
	snaps, err := p.cfg.Plane.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	still := listedOn(snaps)
	for addr, state := range drains {
		if state != "pending" || len(still[addr]) > 0 {
			continue
		}
		if err := p.cfg.Plane.DrainDone(ctx, addr); err != nil {
			return err
		}
		p.MemTier.DrainsDone.Add(1)
		p.log.Info("memory node drained: no snapshot keeps a segment on it", "node", addr)
	}
	return nil
}

// Drain moves every segment off the memory node at addr (an operator's
// `aquifer memnode drain ADDR`) and returns once no snapshot keeps a
// segment there, or ctx ends. The host that looks after the memory tier
// does the copying; any host can ask.
func (p *Pool) Drain(ctx context.Context, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return restore.Mark(restore.ErrInvalid, fmt.Errorf("memory node address %q: %w", addr, err))
	}
	if err := p.cfg.Plane.RequestDrain(ctx, addr); err != nil {
		return seamErr(err)
	}
	for {
		d, err := p.cfg.Plane.Drains(ctx)
		if err == nil && d[addr] == "done" {
			return nil
		}
		select {
		case <-ctx.Done():
			return restore.Mark(restore.ErrUnavailable, fmt.Errorf("draining %s: not done yet (%w); the memory tier's leader keeps at it", addr, ctx.Err()))
		case <-time.After(250 * time.Millisecond):
		}
	}
}
