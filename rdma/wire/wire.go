package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Magic opens every frame header; Version is the protocol version.
const (
	Magic   uint16 = 0xA71F
	Version uint8  = 1

	// HeaderSize is the fixed frame header: magic u16, version u8, op u8,
	// body length u32, request id u64 (all little endian).
	HeaderSize = 16

	// NonceSize is the size of both challenge nonces.
	NonceSize = 32
	// MACSize is the size of an HMAC-SHA256 tag.
	MACSize = sha256.Size

	// MaxBatch is the largest number of reads in one Read request.
	MaxBatch = 4096
	// MaxReadLen is the largest single read (one op) in bytes.
	MaxReadLen = 1 << 20
	// MaxPodName bounds the pod name in Auth.
	MaxPodName = 255
	// MaxControlBody bounds every body except Put and ReadResp.
	MaxControlBody = 16 + MaxBatch*readOpSize
	// MaxPageSize bounds a segment's page size.
	MaxPageSize = 1 << 21

	readOpSize = 16
)

// Op is a frame's operation code.
type Op uint8

// Operation codes. S→C marks node-to-client frames.
const (
	OpHello     Op = 1  // S→C: challenge nonce + node name
	OpAuth      Op = 2  // C→S: client nonce, HMAC over the challenge, pod name
	OpAuthOK    Op = 3  // S→C: HMAC over the client nonce (mutual authentication)
	OpError     Op = 4  // S→C: code + message, answers any request
	OpPut       Op = 5  // C→S: publish one immutable segment
	OpPutOK     Op = 6  // S→C: where the segment lives (addr, rkey for verbs)
	OpRead      Op = 7  // C→S: batch of (off, len) reads of one segment
	OpReadResp  Op = 8  // S→C: the bytes of every read, concatenated in order
	OpDelete    Op = 9  // C→S: drop a segment
	OpDeleteOK  Op = 10 // S→C
	OpStat      Op = 11 // C→S: does the node hold a segment, and its digests
	OpStatResp  Op = 12 // S→C
	OpQPConnect Op = 13 // C→S: a verbs client's queue-pair info
	OpQPConnOK  Op = 14 // S→C: the node's queue-pair info for that client
	OpList      Op = 15 // C→S: one page of the segments the node holds (list.go)
	OpListResp  Op = 16 // S→C
	OpUsage     Op = 17 // C→S: the node's capacity and usage (list.go)
	OpUsageResp Op = 18 // S→C
	opLimit     Op = 19 // first invalid op
	ProtocolTag    = "aquifer-memnode-v1"
)

func (o Op) String() string {
	names := [...]string{"invalid", "hello", "auth", "auth-ok", "error", "put", "put-ok", "read", "read-resp", "delete", "delete-ok", "stat", "stat-resp", "qp-connect", "qp-connect-ok", "list", "list-resp", "usage", "usage-resp"}
	if o < opLimit {
		return names[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Code is an error code carried by OpError.
type Code uint16

// Error codes.
const (
	CodeMalformed       Code = 1
	CodeUnauthenticated Code = 2
	CodeAuthFailed      Code = 3
	CodeNotFound        Code = 4
	CodeOutOfBounds     Code = 5
	CodeExists          Code = 6
	CodeNoSpace         Code = 7
	CodeTooLarge        Code = 8
	CodeInternal        Code = 9
	CodeUnsupported     Code = 10
	// CodeForbidden: the client's identity may not do this to this
	// segment (a read of a segment no published snapshot references, a
	// delete of another writer's referenced segment).
	CodeForbidden Code = 11
)

func (c Code) String() string {
	switch c {
	case CodeMalformed:
		return "malformed request"
	case CodeUnauthenticated:
		return "unauthenticated"
	case CodeAuthFailed:
		return "authentication failed"
	case CodeNotFound:
		return "segment not found"
	case CodeOutOfBounds:
		return "out of bounds"
	case CodeExists:
		return "segment exists with different content"
	case CodeNoSpace:
		return "no space"
	case CodeTooLarge:
		return "too large"
	case CodeInternal:
		return "internal error"
	case CodeUnsupported:
		return "unsupported"
	case CodeForbidden:
		return "forbidden"
	}
	return fmt.Sprintf("code %d", uint16(c))
}

// RemoteError is an OpError received from a memory node.
type RemoteError struct {
	Code Code
	Msg  string
}

// Error reads "the memory node refused the request: CODE: MSG" (MSG alone
// when it already starts with the code's words).
func (e *RemoteError) Error() string {
	code := e.Code.String()
	switch {
	case e.Msg == "":
		return "the memory node refused the request: " + code
	case strings.HasPrefix(e.Msg, code):
		return "the memory node refused the request: " + e.Msg
	}
	return "the memory node refused the request: " + code + ": " + e.Msg
}

// Header is a decoded frame header.
type Header struct {
	Op  Op
	Len uint32
	ID  uint64
}

// ErrBadMagic and friends are returned by ReadHeader.
var (
	ErrBadMagic   = errors.New("bad magic (not an aquifer memnode peer?)")
	ErrBadVersion = errors.New("unsupported protocol version")
	ErrBadOp      = errors.New("unknown op")
)

// PutHeader encodes h into b[:HeaderSize].
func PutHeader(b []byte, h Header) {
	binary.LittleEndian.PutUint16(b[0:], Magic)
	b[2] = Version
	b[3] = byte(h.Op)
	binary.LittleEndian.PutUint32(b[4:], h.Len)
	binary.LittleEndian.PutUint64(b[8:], h.ID)
}

// ParseHeader decodes b[:HeaderSize].
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, io.ErrUnexpectedEOF
	}
	if binary.LittleEndian.Uint16(b) != Magic {
		return Header{}, ErrBadMagic
	}
	if b[2] != Version {
		return Header{}, fmt.Errorf("%w %d (want %d)", ErrBadVersion, b[2], Version)
	}
	op := Op(b[3])
	if op == 0 || op >= opLimit {
		return Header{}, fmt.Errorf("%w %d", ErrBadOp, b[3])
	}
	return Header{Op: op, Len: binary.LittleEndian.Uint32(b[4:]), ID: binary.LittleEndian.Uint64(b[8:])}, nil
}

// ReadHeader reads and decodes one header.
func ReadHeader(r io.Reader, buf *[HeaderSize]byte) (Header, error) {
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return Header{}, err
	}
	return ParseHeader(buf[:])
}

// MaxRequestBody returns the largest body a node accepts for op, given its
// largest accepted segment. A header announcing more is refused before any
// body byte is read.
func MaxRequestBody(op Op, maxSegment uint64) (uint64, error) {
	switch op {
	case OpAuth:
		return NonceSize + MACSize + 2 + MaxPodName, nil
	case OpPut:
		// header fields + one digest per page of the smallest page (512 B) + data
		return 16 + maxSegment/512*8 + maxSegment, nil
	case OpRead:
		return MaxControlBody, nil
	case OpDelete, OpStat:
		return 8, nil
	case OpQPConnect:
		return QPInfoSize, nil
	case OpList:
		return ListReqSize, nil
	case OpUsage:
		return 0, nil
	}
	return 0, fmt.Errorf("%w: %s is not a request", ErrBadOp, op)
}

// ---- Requests --------------------------------------------------------------

// Auth is the client's answer to Hello.
type Auth struct {
	ClientNonce [NonceSize]byte
	MAC         [MACSize]byte
	Pod         string
}

// ReadOp is one read inside a batch: Len bytes at Off within the segment.
type ReadOp struct {
	Off uint64
	Len uint32
}

// Read is a batch of reads of one segment, answered by one ReadResp.
type Read struct {
	Segment uint64
	Ops     []ReadOp
}

// Put publishes one immutable segment: len(Data) == NPages*PageSize and
// Digests[i] is xxhash64 of page i.
type Put struct {
	Segment  uint64
	PageSize uint32
	Digests  []uint64
	Data     []byte
}

// EncodeAuth appends the body of an Auth frame.
func EncodeAuth(dst []byte, a *Auth) []byte {
	dst = append(dst, a.ClientNonce[:]...)
	dst = append(dst, a.MAC[:]...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(a.Pod)))
	return append(dst, a.Pod...)
}

// DecodeAuth decodes an Auth body.
func DecodeAuth(b []byte) (*Auth, error) {
	if len(b) < NonceSize+MACSize+2 {
		return nil, fmt.Errorf("auth body of %d bytes, need at least %d", len(b), NonceSize+MACSize+2)
	}
	a := &Auth{}
	copy(a.ClientNonce[:], b)
	copy(a.MAC[:], b[NonceSize:])
	n := int(binary.LittleEndian.Uint16(b[NonceSize+MACSize:]))
	rest := b[NonceSize+MACSize+2:]
	if n > MaxPodName || n != len(rest) {
		return nil, fmt.Errorf("auth pod name length %d does not match the %d bytes that follow (max %d)", n, len(rest), MaxPodName)
	}
	a.Pod = string(rest)
	return a, nil
}

// EncodeRead appends the body of a Read frame.
func EncodeRead(dst []byte, r *Read) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, r.Segment)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(r.Ops)))
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	for _, op := range r.Ops {
		dst = binary.LittleEndian.AppendUint64(dst, op.Off)
		dst = binary.LittleEndian.AppendUint32(dst, op.Len)
		dst = binary.LittleEndian.AppendUint32(dst, 0)
	}
	return dst
}

// DecodeRead decodes a Read body into r, reusing r.Ops. It checks framing
// and per-op limits; bounds against the segment are the node's job.
func DecodeRead(b []byte, r *Read) error {
	if len(b) < 16 {
		return fmt.Errorf("read body of %d bytes, need at least 16", len(b))
	}
	r.Segment = binary.LittleEndian.Uint64(b)
	n := binary.LittleEndian.Uint32(b[8:])
	if binary.LittleEndian.Uint32(b[12:]) != 0 {
		return fmt.Errorf("read header reserved field is not zero")
	}
	if n == 0 || n > MaxBatch {
		return fmt.Errorf("read batch of %d ops (allowed 1..%d)", n, MaxBatch)
	}
	if uint64(len(b)) != 16+uint64(n)*readOpSize {
		return fmt.Errorf("read batch of %d ops needs a %d-byte body, got %d", n, 16+n*readOpSize, len(b))
	}
	r.Ops = r.Ops[:0]
	var total uint64
	for i := uint32(0); i < n; i++ {
		p := b[16+i*readOpSize:]
		op := ReadOp{Off: binary.LittleEndian.Uint64(p), Len: binary.LittleEndian.Uint32(p[8:])}
		if binary.LittleEndian.Uint32(p[12:]) != 0 {
			return fmt.Errorf("read op %d reserved field is not zero", i)
		}
		if op.Len == 0 || op.Len > MaxReadLen {
			return fmt.Errorf("read op %d has length %d (allowed 1..%d)", i, op.Len, MaxReadLen)
		}
		total += uint64(op.Len)
		r.Ops = append(r.Ops, op)
	}
	if total > 1<<31 {
		return fmt.Errorf("read batch totals %d bytes (max %d)", total, 1<<31)
	}
	return nil
}

// PutFixed is the size of Put's fixed prefix: segment u64, page size u32,
// page count u32.
const PutFixed = 16

// EncodePutPrefix appends Put's fixed prefix and digests; the data follows
// on the wire (use net.Buffers to avoid copying it).
func EncodePutPrefix(dst []byte, p *Put) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, p.Segment)
	dst = binary.LittleEndian.AppendUint32(dst, p.PageSize)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(p.Digests)))
	for _, d := range p.Digests {
		dst = binary.LittleEndian.AppendUint64(dst, d)
	}
	return dst
}

// PutBodyLen is the body length of p on the wire.
func PutBodyLen(p *Put) uint64 {
	return PutFixed + 8*uint64(len(p.Digests)) + uint64(len(p.Data))
}

// DecodePut decodes a Put body. Data and Digests alias b's memory only for
// Data; Digests are freshly allocated.
func DecodePut(b []byte, maxSegment uint64) (*Put, error) {
	if len(b) < PutFixed {
		return nil, fmt.Errorf("put body of %d bytes, need at least %d", len(b), PutFixed)
	}
	p := &Put{Segment: binary.LittleEndian.Uint64(b), PageSize: binary.LittleEndian.Uint32(b[8:])}
	n := uint64(binary.LittleEndian.Uint32(b[12:]))
	if p.PageSize < 512 || p.PageSize > MaxPageSize || p.PageSize&(p.PageSize-1) != 0 {
		return nil, fmt.Errorf("put page size %d (want a power of two in 512..%d)", p.PageSize, MaxPageSize)
	}
	if n == 0 {
		return nil, fmt.Errorf("put of an empty segment")
	}
	size := n * uint64(p.PageSize)
	if size > maxSegment {
		return nil, fmt.Errorf("put segment of %d bytes exceeds this node's limit of %d", size, maxSegment)
	}
	if uint64(len(b)) != PutFixed+8*n+size {
		return nil, fmt.Errorf("put of %d pages of %d bytes needs a %d-byte body, got %d", n, p.PageSize, PutFixed+8*n+size, len(b))
	}
	p.Digests = make([]uint64, n)
	for i := range p.Digests {
		p.Digests[i] = binary.LittleEndian.Uint64(b[PutFixed+8*i:])
	}
	p.Data = b[PutFixed+8*n:]
	return p, nil
}

// EncodeU64 appends a bare u64 body (Delete, Stat).
func EncodeU64(dst []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(dst, v) }

// DecodeU64 decodes a bare u64 body.
func DecodeU64(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("body of %d bytes, want 8", len(b))
	}
	return binary.LittleEndian.Uint64(b), nil
}

// ---- Responses -------------------------------------------------------------

// Hello is the node's challenge.
type Hello struct {
	Nonce [NonceSize]byte
	Node  string
}

// EncodeHello appends a Hello body.
func EncodeHello(dst []byte, h *Hello) []byte {
	dst = append(dst, h.Nonce[:]...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(h.Node)))
	return append(dst, h.Node...)
}

// DecodeHello decodes a Hello body.
func DecodeHello(b []byte) (*Hello, error) {
	if len(b) < NonceSize+2 {
		return nil, fmt.Errorf("hello body of %d bytes", len(b))
	}
	h := &Hello{}
	copy(h.Nonce[:], b)
	n := int(binary.LittleEndian.Uint16(b[NonceSize:]))
	if n != len(b)-NonceSize-2 {
		return nil, fmt.Errorf("hello node name length %d does not match body", n)
	}
	h.Node = string(b[NonceSize+2:])
	return h, nil
}

// EncodeError appends an Error body.
func EncodeError(dst []byte, c Code, msg string) []byte {
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	dst = binary.LittleEndian.AppendUint16(dst, uint16(c))
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(msg)))
	return append(dst, msg...)
}

// DecodeError decodes an Error body.
func DecodeError(b []byte) *RemoteError {
	if len(b) < 4 {
		return &RemoteError{Code: CodeMalformed, Msg: "short error frame"}
	}
	n := int(binary.LittleEndian.Uint16(b[2:]))
	if n > len(b)-4 {
		n = len(b) - 4
	}
	return &RemoteError{Code: Code(binary.LittleEndian.Uint16(b)), Msg: string(b[4 : 4+n])}
}

// PutOK says where a segment lives on the node: Addr and RKey are the
// registered address and remote key a verbs client reads with (zero when the
// node has no RDMA device); Existed is set when an identical segment was
// already stored (puts are idempotent).
type PutOK struct {
	Addr    uint64
	RKey    uint32
	Existed bool
}

// EncodePutOK appends a PutOK body.
func EncodePutOK(dst []byte, p *PutOK) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, p.Addr)
	dst = binary.LittleEndian.AppendUint32(dst, p.RKey)
	var f uint32
	if p.Existed {
		f = 1
	}
	return binary.LittleEndian.AppendUint32(dst, f)
}

// DecodePutOK decodes a PutOK body.
func DecodePutOK(b []byte) (*PutOK, error) {
	if len(b) != 16 {
		return nil, fmt.Errorf("put-ok body of %d bytes, want 16", len(b))
	}
	return &PutOK{Addr: binary.LittleEndian.Uint64(b), RKey: binary.LittleEndian.Uint32(b[8:]), Existed: binary.LittleEndian.Uint32(b[12:])&1 != 0}, nil
}

// StatResp describes a stored segment.
type StatResp struct {
	PageSize uint32
	Digests  []uint64
}

// EncodeStatResp appends a StatResp body.
func EncodeStatResp(dst []byte, s *StatResp) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, s.PageSize)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(s.Digests)))
	for _, d := range s.Digests {
		dst = binary.LittleEndian.AppendUint64(dst, d)
	}
	return dst
}

// DecodeStatResp decodes a StatResp body.
func DecodeStatResp(b []byte) (*StatResp, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("stat body of %d bytes", len(b))
	}
	s := &StatResp{PageSize: binary.LittleEndian.Uint32(b)}
	n := uint64(binary.LittleEndian.Uint32(b[4:]))
	if uint64(len(b)) != 8+8*n {
		return nil, fmt.Errorf("stat body of %d bytes for %d digests", len(b), n)
	}
	s.Digests = make([]uint64, n)
	for i := range s.Digests {
		s.Digests[i] = binary.LittleEndian.Uint64(b[8+8*i:])
	}
	return s, nil
}

// ---- Admission -------------------------------------------------------------

// ClientMAC is the tag a pod member proves knowledge of the shared secret
// with: HMAC-SHA256(secret, tag || "client" || node nonce || client nonce || pod).
func ClientMAC(secret []byte, nodeNonce, clientNonce [NonceSize]byte, pod string) [MACSize]byte {
	return mac(secret, "client", nodeNonce, clientNonce, pod)
}

// NodeMAC is the node's proof to the client, so a client never sends data
// to an impostor: HMAC-SHA256(secret, tag || "node" || node nonce || client nonce || pod).
func NodeMAC(secret []byte, nodeNonce, clientNonce [NonceSize]byte, pod string) [MACSize]byte {
	return mac(secret, "node", nodeNonce, clientNonce, pod)
}

func mac(secret []byte, role string, a, b [NonceSize]byte, pod string) [MACSize]byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ProtocolTag))
	m.Write([]byte(role))
	m.Write(a[:])
	m.Write(b[:])
	m.Write([]byte(pod))
	var out [MACSize]byte
	copy(out[:], m.Sum(nil))
	return out
}

// DecodeRequest decodes any client→node body for op. It is the single entry
// point the memory node uses, and the fuzz target.
func DecodeRequest(op Op, body []byte, maxSegment uint64, rd *Read) (any, error) {
	switch op {
	case OpAuth:
		return DecodeAuth(body)
	case OpPut:
		return DecodePut(body, maxSegment)
	case OpRead:
		if err := DecodeRead(body, rd); err != nil {
			return nil, err
		}
		return rd, nil
	case OpDelete, OpStat:
		return DecodeU64(body)
	case OpQPConnect:
		return DecodeQPInfo(body)
	case OpList:
		return DecodeListReq(body)
	case OpUsage:
		if len(body) != 0 {
			return nil, fmt.Errorf("usage request with a %d-byte body, want none", len(body))
		}
		return UsageReq{}, nil
	}
	return nil, fmt.Errorf("%w: %s is not a request", ErrBadOp, op)
}

// QPInfo is what the two ends of an RDMA RC queue pair exchange over the
// control connection to connect it (rdma/verbs).
type QPInfo struct {
	LID uint16
	QPN uint32
	PSN uint32
	GID [16]byte // RoCE / global routing
}

// QPInfoSize is the encoded size of a QPInfo: lid u16, 0 u16, qpn u32,
// psn u32, gid[16].
const QPInfoSize = 28

// EncodeQPInfo appends q.
func EncodeQPInfo(dst []byte, q *QPInfo) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, q.LID)
	dst = binary.LittleEndian.AppendUint16(dst, 0)
	dst = binary.LittleEndian.AppendUint32(dst, q.QPN)
	dst = binary.LittleEndian.AppendUint32(dst, q.PSN)
	return append(dst, q.GID[:]...)
}

// DecodeQPInfo decodes a QPInfo body.
func DecodeQPInfo(b []byte) (*QPInfo, error) {
	if len(b) != QPInfoSize || binary.LittleEndian.Uint16(b[2:]) != 0 {
		return nil, fmt.Errorf("queue-pair info of %d bytes, want %d with a zero reserved field", len(b), QPInfoSize)
	}
	q := &QPInfo{LID: binary.LittleEndian.Uint16(b), QPN: binary.LittleEndian.Uint32(b[4:]), PSN: binary.LittleEndian.Uint32(b[8:])}
	copy(q.GID[:], b[12:])
	if q.QPN >= 1<<24 || q.PSN >= 1<<24 {
		return nil, fmt.Errorf("queue-pair number %#x / PSN %#x exceed 24 bits", q.QPN, q.PSN)
	}
	return q, nil
}
