// Package control is Aquifer's control plane on etcd: the cluster catalog
// of snapshots, each pod's placements and restore heat, membership of pager
// hosts, pods and memory nodes through leases, a pod's slot table and the
// ownership and fencing tokens of its CXL region, capacity-aware placement
// and drains.
//
// etcd runs as its own member (package control/member: in `aquifer serve
// --embedded` without --etcd-endpoints, or `aquifer etcd`), mutual TLS
// only; this package is the client (Connect, or FromClient on the in-process
// client of a member this process runs), so that only the setup root
// links etcd's server. Every call is bounded (Plane.Timeout, DefaultTimeout
// 5 s) and an unreachable etcd is reported as ErrUnavailable. Everything
// else in Aquifer reaches etcd only through this package, which keeps the
// key layout in one place:
//
//	/aquifer/snap/<name>                  Snapshot (JSON, sealed by pool)      the cluster catalog
//	/aquifer/host/<id>                    Member, leased                       pager hosts
//	/aquifer/memnode/<id>                 Member (addr, capacity, used), leased  memory nodes
//	/aquifer/drain/<addr>                 "pending" | "done"                   memory nodes leaving
//	/aquifer/owner/<resource>             holder, leased                       ownership (the memory tier's leader)
//	/aquifer/pods/<pod>/members/<name>    MemberInfo, leased                   a pod's hosts
//	/aquifer/pods/<pod>/hosts/<slot>      host name, leased                    the pod's slot table
//	/aquifer/pods/<pod>/chunks/<chunk>    "<slot>/<lease>", leased             CXL chunk ownership (create revision = fencing token)
//	/aquifer/pods/<pod>/catalog/<key>     ExtentRef                            published CXL extents
//	/aquifer/pods/<pod>/hot/<name>        Placement (sealed by pool)           where the pod's region holds a hot set
//	/aquifer/pods/<pod>/heat/<name>       Heat                                 restores in the pod, decayed
//	/aquifer/pods/<pod>/evict/<name>      requester, leased                    demotions asked of a chunk's owner
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
