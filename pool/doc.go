// Package pool is the hierarchical memory pool: it publishes Aquifer images
// into the tiers and opens them for restores.
//
// Publish splits an image (package snapimage) three ways:
//
//   - the hot segment goes to the pod's CXL region under the ownership
//     protocol (package cxl/pod), keyed by the snapshot name;
//   - the cold segment, a copy of the hot segment (so that evicting it from
//     CXL demotes it, never loses it) and the image metadata go to the RDMA
//     memory nodes as immutable replicated segments (package rdma);
//   - the catalog entry (package control, in etcd) records where each piece
//     lives. It stays small: the per-page digests travel inside the
//     metadata object, not in etcd.
//
// Every catalog entry is sealed (seal.go): an HMAC-SHA256, under a key
// derived from the pod secret (which the control plane does not hold),
// over the name and every field that decides what a VM is served, the
// SHA-256 of the metadata object included. An entry that does not verify —
// rewritten in etcd, swapped with another name's, or published before
// entries were sealed — fails Open and List with an error saying to
// republish it, and never feeds a guest.
//
// Open reads the metadata back from the memory nodes, checks it, and hands
// the pager (through pagerd.Snapshot) a CXL hot source with the RDMA copy as
// its fallback, and an RDMA cold source. When the CXL tier is full, Publish
// evicts the least recently restored snapshots' hot segments from CXL; their
// restores then pre-install from the RDMA copy.
//
// StartEmbedded runs a whole pod in one process (embedded etcd, an emulated
// CXL region, in-process memory nodes on loopback, or external `aquifer
// memnode` processes); Init prepares its persistent state (data directory,
// pod secret, formatted region) for `aquifer pool init`. Both keep what a
// restart needs: the region file, etcd's data, and each in-process memory
// node's segments and address (segments name their nodes by address).
//
// This package composes tiers and the control plane; it must not serve
// faults (package pager) or speak the Firecracker protocol.
package pool
