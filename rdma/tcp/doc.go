// Package tcp owns the stream backend of the rdma.Transport interface: a
// real network transport between processes that speaks the rdma/wire
// protocol to memory nodes (package memnode) over TCP.
//
// One connection emulates one RC queue pair: PostReads encodes one Read
// frame for the whole batch and writes it with a single flush (the
// "doorbell"), many batches may be outstanding (pipelining), and a reader
// goroutine copies each ReadResp straight into the registered destination
// buffers and queues per-read completions for Poll. Close waits for that
// goroutine, so no destination is written after Close returns.
//
// The connection is admitted either by mutual TLS (NewTLS: this host's
// certificate of the cluster CA, the node's verified against the CA, the
// address dialled and the memory-node role; every frame inside the TLS
// session) or by the HMAC challenge/response of rdma/wire (New), verifying
// the node's proof in turn. This package must not implement
// replication, digests or retries (package rdma does) and must not import
// memnode outside tests.
package tcp
