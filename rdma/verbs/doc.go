// Package verbs owns the hardware backend of the rdma.Transport interface:
// libibverbs through cgo, for memory nodes reached over InfiniBand or RoCE
// RNICs. It is compiled only with `-tags rdma` and cgo (files
// verbs_cgo.go); every other build gets verbs_stub.go, whose New reports
// plainly that the backend was not built, so the package always compiles.
//
// Design (see docs/rdma.md for running it on real RNICs):
//   - one protection domain per device; Register is ibv_reg_mr on mmap'd
//     off-heap memory (package offheap) with LOCAL_WRITE, and Expose
//     registers node-side slabs with REMOTE_READ;
//   - one RC queue pair per (client, node, priority), created with
//     sq_sig_all = 0 and brought up INIT → RTR → RTS from a QPInfo exchanged
//     through the qp-connect request on the admitted memnode control
//     connection (Config.Control, the tcp transport); the node side is
//     Endpoint (memnode.RDMAEndpoint), one passive QP per client;
//   - PostReads builds a chain of IBV_WR_RDMA_READ work requests, one per
//     read, signals only the last one (selective signalling: RC completes in
//     order, so the last completion implies the whole chain), and rings the
//     doorbell once with a single ibv_post_send;
//   - a goroutine locked to its OS thread busy-polls the completion queue
//     (ibv_poll_cq) and fans each signalled completion out to per-read
//     rdma.Completions; an error completion fails the queue pair and every
//     outstanding read, so the client fails over.
//
// On a machine without an RDMA device New returns an error wrapping
// rdma.ErrNoDevice that says so. This package must not implement
// replication, digests or placement (package rdma does).
package verbs
