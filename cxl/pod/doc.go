// Package pod lays Aquifer's pod pool out on a [cxl.Region] and implements
// the ownership-based coherence protocol that makes sharing it between hosts
// correct without hardware cache coherence (docs/coherence.md).
//
// # Layout
//
// A formatted region holds a superblock (written once by the formatter), a
// host table of one padded slot per host (each written only by its host), a
// descriptor table of 64-byte one-line descriptors, and a data area of
// chunks (2 MiB by default). Chunk ownership comes from the control plane;
// the owner of a chunk is the only writer of the chunk's data and of its
// descriptors. An extent is a run of 4 KiB pages inside one chunk, named by
// one descriptor, and is immutable once published: a new version goes to a
// new extent.
//
// # Protocol
//
// Writers publish in three fenced steps (descriptor Writing with an odd
// generation; data written back; descriptor Published with the next even
// generation and a payload hash) and only then record the (descriptor,
// generation, fencing token) in the catalog. Readers announce themselves in
// their host slot, invalidate and load the descriptor, check it against the
// catalog, invalidate and copy the extent, verify the hash and re-check the
// generation; on failure they retry and finally return ErrFallback so the
// caller fetches the pages from the RDMA tier. A caller that checks every
// byte itself before using any (per-page digests: the pager) reads with
// InstallChecked / InstallManyChecked: the payload check is its own, a
// mismatch it reports as ErrStale is retried the same way, and the extent
// is not hashed twice. Retired extents are reused
// only after every live host that was inside a read when the extent was
// retired has left that read (epoch-based reclamation on per-host read
// sequences). There are no cross-host atomics anywhere.
//
// # Control plane
//
// [Coordinator] is the seam to etcd (leases, chunk ownership with fencing
// tokens, the catalog). Production implements it over etcd (package pool);
// the tests take an in-memory one, shared between processes over net/rpc,
// from package podtest.
//
// # Boundaries
//
// This package must not touch memory except through cxl.Region (no direct
// mmap, no unsafe pointer games on the region), must not use atomic
// read-modify-write on region memory, and knows nothing about snapshots,
// guests or userfaultfd beyond the Install callback.
package pod
