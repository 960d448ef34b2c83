// Package pool is the hierarchical memory pool: it publishes Aquifer images
// into the tiers and opens them for restores, for one host of one pod of
// the cluster.
//
// Publish splits an image (package snapimage) three ways:
//
//   - the cold segment, a copy of the hot segment (so that demoting it from
//     CXL never loses it) and the image metadata go to the RDMA memory nodes
//     as immutable replicated segments (package rdma);
//   - the cluster catalog entry (package control, in etcd) names every
//     segment; it stays small: the per-page digests travel inside the
//     metadata object;
//   - the hot segment goes into this pod's CXL region under the ownership
//     protocol (package cxl/pod), as one extent per chunk it needs, and the
//     pod's placement record says where.
//
// Every catalog entry and placement is sealed (seal.go): an HMAC-SHA256,
// under a key derived from the pod secret (which the control plane does
// not hold), over the name and every field that decides what a VM is
// served, the SHA-256 of the metadata object included. One that does not
// verify fails with an error saying to republish it and never feeds a
// guest.
//
// Open reads the entry's revision and this pod's placement in one round
// trip (the whole entry, verified, only when that revision is not the one
// cached), and the metadata back from the memory nodes (checked) the first
// time a version is opened, and hands the pager (a restore.Snapshot) a CXL
// hot source with the RDMA copy as its fallback, and an RDMA cold source.
// A snapshot without a placement here is served from its RDMA copy and
// promoted after the restore when the heat policy says so (tiering.go;
// restores' heat is written in batches, heat.go); room is made by demoting
// the coldest hot sets. Each host's
// sweep (cxl.go) retires what no placement names in the chunks it owns; one
// host of the cluster keeps the memory tier at its redundancy (memtier.go:
// re-replication of lost nodes' segments, drains; memgc.go: segments no
// catalog entry lists, swept after a grace). The host's identities on
// the region are given by the setup root (package embed) with SetCXL and
// withdrawn with ClearCXL when its lease is lost or the region fails its
// checks.
//
// This package composes tiers and the control plane; it must not serve
// faults (package pager) or speak the Firecracker protocol.
package pool
