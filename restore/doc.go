// Package restore is the seam between the pager and the tiers: what passes
// between them when a VM is restored, and nothing else.
//
//	  pager (policy)          pagerd (daemon)
//	      │  consumes             │  asks an Opener for a Snapshot
//	      ▼                       ▼
//	┌────────────────────── restore ──────────────────────┐
//	│ Snapshot: image metadata + Hot, HotFallback, Cold   │
//	│ HotSource / ColdSource, ArenaPool, ReaderAtSource   │
//	│ Opener, Catalog, Info; ErrNotFound, ErrUnavailable… │
//	└─────────────────────────────────────────────────────┘
//	      ▲ implemented by                 ▲
//	  pool (CXL + RDMA + catalog)      rdma (ObjectSource), baseline
//
// An opened Snapshot is resolved once, when a VM is prepared: its sources
// carry everything the restore path needs (for CXL, the published extent's
// reference; for RDMA, the segment descriptors), so no control-plane read
// happens while pages are served. A source validates what it returns under
// its tier's rules; the pager still checks every page against the image's
// digests.
//
// This package owns these types and the error values that cross the seam.
// It must not import the pager, the daemon, the control plane or any tier:
// it sits below all of them.
package restore
