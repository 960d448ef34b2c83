package pool

import (
	"context"
	"fmt"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/rdma"
)

// Orphan collection. `pool rm` deletes a snapshot's segments from every
// node that holds one, but a delete can fail (a node down or partitioned
// at that moment), a publish can die between storing its segments and
// writing its catalog entry, and a re-replication can copy a segment and
// then lose the race to rewrite the entry. Each leaves a segment that no
// catalog entry lists: an orphan, holding memory forever.
//
// Every GCInterval the memory tier's leader lists each registered node's
// segments and deletes those that no catalog entry lists on that node and
// that the node stored more than OrphanGrace ago. The grace covers every
// segment still on its way into the catalog (a publish in flight, a
// re-replication not yet recorded); a node that authorizes by the catalog
// also refuses to delete a segment that an entry lists there, so a
// catalog change racing the sweep cannot make it delete a live copy.
// The sweep does nothing while some entry lists no segments (written by an
// older version: what it references is unknown).

// memTierGC runs one orphan sweep.
// listed is listedOn(snaps).
func (p *Pool) memTierGC(ctx context.Context, snaps []*control.Snapshot, listed map[string]map[string]bool, members []control.Member) {
	for _, s := range snaps {
		if len(s.Segments) == 0 {
			p.log.Debug("orphan sweep skipped: a catalog entry lists no segments", "snapshot", s.Name)
			return
		}
	}
	grace := p.cfg.MemTier.OrphanGrace
	for _, m := range members {
		if m.Addr == "" {
			continue
		}
		node := rdma.NodeID(m.Addr)
		segs, err := p.cfg.RDMA.List(ctx, node)
		if err != nil {
			p.log.Debug("orphan sweep: cannot list a memory node", "node", m.Addr, "err", err)
			continue
		}
		for _, seg := range segs {
			id := fmt.Sprintf("%016x", uint64(seg.ID))
			if listed[m.Addr][id] || seg.ReferencedHere || seg.Stored.Unix() <= 0 || time.Since(seg.Stored) < grace {
				continue
			}
			if err := p.cfg.RDMA.DeleteOn(ctx, node, seg.ID); err != nil {
				p.MemTier.OrphanErrors.Add(1)
				p.log.Warn("deleting an orphaned segment", "node", m.Addr, "segment", id, "err", err)
				continue
			}
			p.MemTier.OrphansDeleted.Add(1)
			p.MemTier.OrphanBytesDeleted.Add(int64(seg.Len))
			p.log.Info("deleted an orphaned segment: no snapshot lists it", "node", m.Addr, "segment", id,
				"bytes", seg.Len, "stored", seg.Stored.UTC().Format(time.RFC3339), "writer", seg.Writer)
		}
	}
}

// listedOn returns, for every memory node the catalog entries snaps name,
// the IDs of the segments they list there.
func listedOn(snaps []*control.Snapshot) map[string]map[string]bool {
	listed := map[string]map[string]bool{}
	for _, s := range snaps {
		for _, sp := range s.Segments {
			for _, n := range sp.Nodes {
				if listed[n] == nil {
					listed[n] = map[string]bool{}
				}
				listed[n][sp.ID] = true
			}
		}
	}
	return listed
}
