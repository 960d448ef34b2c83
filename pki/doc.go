// Package pki is Aquifer's small certificate authority: one CA per cluster
// (an ECDSA P-256 key and a self-signed certificate) that issues the
// certificates the cluster's processes authenticate each other with over
// mutual TLS — the etcd member (server and peer), the pager daemons (etcd
// clients), and hosts and memory nodes on the memory-node protocol (package
// memnode names their identities and issues their certificates).
//
// Everything is standard crypto/x509 and crypto/tls. Files live in one
// directory (by default DATA-DIR/tls), every one mode 0600, written
// atomically (internal/atomicfile):
//
//	ca.crt, ca.key             the cluster CA
//	NAME.crt, NAME.key         a certificate it issued (member, client, ...)
//
// Ensure issues a certificate only when it is missing, signed by another
// CA, expiring within 30 days, or does not cover the names asked for, so a
// restarted process keeps its certificates. Before a key is used, its file
// and directory are checked: a key that other users can read, or a
// directory they can write, is refused with the chmod that fixes it.
//
// This package owns key and certificate files and TLS configurations built
// from them. It must not open network connections or know which process
// uses which certificate for what: callers (embed, the CLI) decide that.
package pki
