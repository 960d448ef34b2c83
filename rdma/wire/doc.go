// Package wire owns the byte format spoken between Aquifer clients and
// memory nodes over a stream transport (rdma/tcp) and the control exchange
// that precedes a verbs connection: framing, request/response encoding, the
// HMAC challenge/response that admits pod members when the connection is
// not mutual TLS (under TLS the same frames travel inside the session and
// the node's hello follows the handshake), the inventory requests (list,
// usage), and error codes.
//
// Every decoder here is total: it returns an error for any input and never
// panics or allocates more than the frame limits allow, because a memory node
// decodes bytes from untrusted peers (see FuzzDecodeRequest). Limits are
// checked against the header before any body is read.
//
// This package is pure encoding. It must not do I/O beyond the io.Reader /
// io.Writer it is handed, must not import other Aquifer packages, and must not
// know about slabs, segments on disk, or replication.
//
// The format is documented for operators in docs/rdma.md ("Wire protocol").
package wire
