// Package memnode owns the memory node of Aquifer's cluster-wide cold tier:
// the process behind `aquifer memnode` that holds large off-heap slabs,
// accepts writes of immutable cold segments, serves batched reads of them,
// admits only members of its pod, persists segments in its data directory
// so a restarted node serves them again, and exports Prometheus metrics.
//
// Storage: segments are copied into a few large anonymous mappings (slabs,
// package offheap, MAP_NORESERVE) allocated up to --capacity; a free-extent
// list per slab places them. A segment is immutable once published: a put of
// identical bytes is idempotent, a put of different bytes under the same ID
// is refused. Each segment is written to DataDir first (temp file, fsync,
// rename, fsync of the directory) and only then becomes readable, so a crash
// never exposes a partial segment, and a file that fails its digests at
// start-up is moved aside and logged instead of served.
//
// Admission, by mutual TLS (Config.TLS, identity.go): the node presents its
// certificate of the cluster CA (CN "memnode NAME") and admits only hosts
// with one (CN "host POD/HOST"); every frame then travels inside the TLS
// session and the client's identity is its certificate's common name. Or,
// the simple mode, by the pod secret: the node sends a random nonce; the
// client answers with HMAC-SHA256 over both nonces and its pod name under
// the pod's shared secret, and the node proves itself back the same way
// (package rdma/wire); the identity is then "pod NAME". Any request before
// admission is refused with a clear error, logged with log/slog and
// counted, and the connection closed; other connections are unaffected.
//
// Authorization (Config.Catalog, authz.go): every segment records its
// writer's identity, persisted with it. With a view of the cluster
// catalog, a client reads only segments a published snapshot lists, its
// own, or any within Config.Grace of its put, and deletes only its own or
// unlisted ones; anything else is refused with the forbidden code, logged
// and counted. Without a catalog every admitted client may do everything.
// List and Usage (rdma/wire) tell what the node holds, by whom, and how
// full it is. Malformed, oversized and out-of-bounds requests get an
// error frame naming the problem. Connections in admission are bounded
// (admission.go): small buffers, Config.AuthTimeout to answer, at most
// Config.MaxUnauthenticated at once (the oldest closed beyond), so a flood
// of idle connections costs little and does not lock pod members out.
//
// With Config.RDMA (the CLI's --rdma, backed by rdma/verbs) every slab is
// also registered for one-sided RDMA READs, put answers carry each
// segment's address and remote key, and clients connect queue pairs through
// the qp-connect request on their admitted control connection.
//
// This package must not import the rdma client or any backend; it speaks
// only rdma/wire, reaches verbs through the RDMAEndpoint interface and the
// control plane through the Catalog interface (package embed wires
// control's SegmentIndex in). It must not interpret page contents beyond
// the digests it verifies.
package memnode
