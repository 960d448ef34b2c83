// Package rdma owns Aquifer's cluster-wide cold tier from the client side:
// the Transport interface that every backend implements (rdma/tcp,
// rdma/emu, rdma/verbs), and the Client that the pager uses on top of it —
// segment placement over R replicas or Reed–Solomon shards, per-page xxhash
// digests with transparent failover, batching and pipelining of page reads,
// a prefetch queue that never delays demand reads, and per-read latency
// histograms. It also holds a fault-injection Transport decorator for tests.
//
// The transport model is one-sided RDMA: a client registers off-heap
// destination memory (Transport.Register), posts a batch of reads of one
// segment with one call (Conn.PostReads: one round trip, one doorbell), and
// collects asynchronous per-read Completions (Conn.Poll, on one dispatcher
// goroutine per connection; a demand read also polls for its own completion
// for a short while where the Conn is a TryPoller). After Conn.Close
// returns, the transport never writes a destination buffer again, which is
// what lets the client re-issue a timed-out read into the same buffer.
//
// Memory nodes are the package memnode. This package must not import
// memnode, any backend subpackage, the pager or the CXL tier; it must not
// decide what is hot or cold, and it never stores pages itself.
package rdma
