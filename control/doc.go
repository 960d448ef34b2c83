// Package control is Aquifer's control plane on etcd: the snapshot catalog,
// membership of pager hosts and memory nodes through leases, ownership and
// fencing tokens for the CXL coherence protocol, capacity-aware placement
// and the least-recently-restored order used for CXL eviction.
//
// etcd runs embedded by default (StartEmbedded: an in-process member with a
// data directory on loopback, tuned for fast elections) or as an external
// cluster (Connect with endpoints). Everything else in Aquifer reaches etcd
// only through this package, which keeps the key layout in one place:
//
//	/aquifer/snap/<name>          Snapshot (JSON)            catalog
//	/aquifer/lru/<name>           last restore (unix ns)     eviction order
//	/aquifer/host/<id>            Member (JSON), leased      pager hosts
//	/aquifer/memnode/<id>         Member (JSON), leased      memory nodes
//	/aquifer/owner/<resource>     holder id, leased          CXL ownership
//
// Memory nodes read it too (segindex.go): SegmentIndex keeps the segment
// lists of the catalog's entries, which they authorize reads and deletes
// by, and WatchMemNodes follows the memory nodes' own registrations.
//
// A fencing token is the etcd revision at which ownership was acquired; a
// writer presents it with every publish, and a catalog update made under
// ownership is a transaction conditioned on the owner key still holding
// that revision, so a writer whose lease expired can never publish.
//
// This package must not touch guest memory, tiers or the page path; it
// stores descriptions of where pages live, never pages.
package control
