// Package emu owns the in-process backend of the rdma.Transport interface:
// reads are memcpys from memnode.Store slabs in the same process, and every
// completion is released only when a documented, deterministic model of a
// one-sided RDMA READ over a 100 Gb/s RC connection says it would arrive.
// Benchmarks use it so their numbers do not depend on loopback TCP noise;
// every figure it produces is EMULATED and is labelled so.
//
// The model (Model, defaults from published figures, see docs/rdma.md):
//
//	start   = max(post time, time the link frees up)
//	wire    = bytes / Bandwidth            (100 Gb/s = 12.5 GB/s)
//	due     = start + wire + Base + PerOp·ops + jitter
//	due     = max(due, previous due)       (RC completions are in order)
//
// with Base 2.5 µs, PerOp 20 ns, and jitter drawn from an exponential
// distribution of mean Jitter (200 ns, capped at 20×) by a seeded PRNG, so a
// run with the same seed and the same sequence of posts is reproducible.
// Poll sleeps until shortly before the head completion is due and then
// spins, so wall-clock latency is the model plus Go scheduling overhead.
//
// This package must not be used in production paths and must not import the
// rdma client's replication logic; it only implements rdma.Transport.
package emu
