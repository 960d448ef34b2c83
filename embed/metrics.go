package embed

import (
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// registerPodMetrics exports the pod membership and CXL tier state of this
// host (the daemon registers its own restore metrics).
func (s *Server) registerPodMetrics(reg prometheus.Registerer) {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	c := &s.Pool.Counters
	gauge64 := func(name, help string, v *atomic.Int64) prometheus.Collector {
		if strings.HasSuffix(name, "_seconds") {
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) / 1e9 })
		}
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	reg.MustRegister(
		gauge("aquifer_cxl_in_service", "1 while this host serves from the pod's CXL tier, 0 while it is out of service (corrupt region, lost lease).", func() float64 {
			if ok, _ := s.Pool.CXLStatus(); ok {
				return 1
			}
			return 0
		}),
		gauge("aquifer_cxl_owned_chunks", "CXL chunks this host owns (publishes into).", func() float64 { return float64(len(s.Pool.OwnedChunks())) }),
		gauge("aquifer_pod_slots", "Host slots (reader identities) this host holds in the pod's slot table.", func() float64 {
			if m := s.member.Load(); m != nil {
				return float64(len(m.Slots))
			}
			return 0
		}),
		counter("aquifer_pod_rejoins_total", "Times this host lost its pod lease (fenced) and rejoined as a new member.", &s.rejoins),
		counter("aquifer_cxl_evictions_total", "Hot sets this host demoted from CXL to their RDMA copies.", &c.Evicted),
		counter("aquifer_cxl_eviction_requests_total", "Evictions this host asked the owner of another chunk for.", &c.EvictRequests),
		counter("aquifer_cxl_orphans_retired_total", "Extents of this host's chunks retired because no snapshot referenced them.", &c.OrphansRetired),
		counter("aquifer_cxl_chunks_acquired_total", "CXL chunks this host acquired.", &c.ChunksAcquired),
		counter("aquifer_cxl_chunks_released_total", "Empty CXL chunks this host gave back.", &c.ChunksReleased),
		counter("aquifer_cxl_promotions_total", "Hot sets promoted into this pod's CXL region from their RDMA copies.", &c.Promoted),
		counter("aquifer_cxl_promotion_failures_total", "Promotions that failed.", &c.PromoteFailures),
		counter("aquifer_memnode_segments_deleted_total", "Memory-node segments this host deleted (removed snapshots).", &c.SegmentsDeleted),
		gauge64("aquifer_memtier_leader", "1 while this host looks after the memory tier (re-replication, drains).", &s.Pool.MemTier.Leader),
		gauge64("aquifer_memtier_rounds_total", "Memory tier rounds run by this host while leader.", &s.Pool.MemTier.Rounds),
		gauge64("aquifer_memtier_segments_repaired_total", "Segments re-replicated after a memory node was lost or drained.", &s.Pool.MemTier.SegmentsRepaired),
		gauge64("aquifer_memtier_repair_errors_total", "Snapshots whose re-replication failed in a round (retried).", &s.Pool.MemTier.RepairErrors),
		gauge64("aquifer_memtier_orphans_deleted_total", "Segments no catalog entry listed, deleted from the memory nodes by the orphan sweep.", &s.Pool.MemTier.OrphansDeleted),
		gauge64("aquifer_memtier_orphan_bytes_deleted_total", "Bytes of orphaned segments deleted from the memory nodes.", &s.Pool.MemTier.OrphanBytesDeleted),
		gauge64("aquifer_memtier_orphan_delete_errors_total", "Deletes of orphaned segments that failed (retried at the next sweep).", &s.Pool.MemTier.OrphanErrors),
		gauge64("aquifer_memtier_drains_done_total", "Memory nodes drained.", &s.Pool.MemTier.DrainsDone),
		gauge64("aquifer_memtier_last_repair_seconds", "Duration of the last round that re-replicated segments (nanoseconds as seconds).", &s.Pool.MemTier.LastRepairNS),
	)
}
