// Package cluster runs a whole Aquifer cluster on one machine as separate
// processes — the real topology, the way a new user meets it (like `kind
// create cluster` or `cockroach demo --nodes 3`), and the way the
// end-to-end tests start one:
//
//	DIR/cluster.json       the processes, their addresses and pids
//	DIR/cluster.secret     the pod secret (it seals catalog entries)
//	DIR/etcd<k>/           control-plane members (`aquifer etcd`), 1 or 3; the cluster CA in DIR/etcd-tls
//	DIR/memnodes/m<k>/     memory nodes (`aquifer memnode`), registered in the control plane;
//	                       their certificates in DIR/memnodes/m<k>.tls (certs.go)
//	DIR/pod<i>/            each pod: its CXL region is a shared /dev/shm file
//	DIR/pod<i>/host<j>/    each host: `aquifer serve --embedded --host-name host<j>`,
//	                       API socket DIR/pod<i>/host<j>/api.sock, address 127.0.0.x,
//	                       memory-node certificate DIR/pod<i>/host<j>/memnode-tls
//
// Up starts everything and returns when every piece serves; Status reads
// the state back from the processes, the control plane, the memory nodes
// and the regions; Down stops it. Every process is started detached (its
// own session), so the cluster outlives the command that started it.
//
// This package owns the local topology and its lifecycle only. It starts
// the aquifer binary's own commands and talks to them through their public
// interfaces (the control plane client, the daemon API, memory-node
// metrics); it must not wire pieces in-process (package embed does that
// inside each daemon).
package cluster
