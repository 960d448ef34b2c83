package rdma

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/aquifer-pool/aquifer/offheap"
)

// NodeID names a memory node; for the tcp and verbs backends it is the
// node's control address, host:port.
type NodeID string

// SegmentID names one immutable cold segment cluster-wide.
type SegmentID uint64

// SegmentRef is how a Conn addresses one stored copy of a segment: the ID
// for stream transports, and the node-side address and remote key that a
// one-sided verbs READ needs (zero on nodes without an RDMA device).
type SegmentRef struct {
	ID   SegmentID
	Len  uint64
	Addr uint64
	RKey uint32
}

// ReadOp reads len(Dst) bytes at Off within Seg into Dst, which must lie in
// memory registered with Transport.Register. Cookie is returned in the
// Completion.
type ReadOp struct {
	Seg    SegmentRef
	Off    uint64
	Dst    []byte
	Cookie uint64
}

// Completion reports one ReadOp. Err is nil on success. Bytes in Dst are
// only valid after a successful Completion.
type Completion struct {
	Cookie uint64
	Err    error
}

// WriteSegment publishes one immutable segment: Data is a whole number of
// PageSize pages and Digests[i] = Digest(page i).
type WriteSegment struct {
	ID       SegmentID
	PageSize int
	Data     []byte
	Digests  []uint64
}

// Conn is a connection to one memory node (an RC queue pair on verbs). A
// Conn is safe for concurrent PostReads from several goroutines; Poll is
// meant for one consumer.
type Conn interface {
	// Node is the peer.
	Node() NodeID
	// PostReads posts a batch of reads with one doorbell (verbs) or one
	// request frame and one syscall (tcp). Ops of one call must address one
	// segment. An error means none of the ops was posted.
	PostReads(ops []ReadOp) error
	// Poll waits until at least one completion is available (or ctx ends),
	// fills out, and returns how many it filled. After the Conn failed, every
	// outstanding op completes with an error and Poll then returns the error.
	Poll(ctx context.Context, out []Completion) (int, error)
	// Write publishes a segment synchronously and returns its reference on
	// this node. Writing an identical segment again succeeds; different
	// content under an existing ID fails (segments are immutable).
	Write(ctx context.Context, w *WriteSegment) (SegmentRef, error)
	// Delete drops a segment from the node.
	Delete(ctx context.Context, id SegmentID) error
	// Close tears the connection down. Outstanding reads complete with
	// ErrClosed; once Close returns no destination buffer is written again.
	Close() error
}

// TryPoller is implemented by Conns whose completions can be taken
// without blocking (emu, tcp): a demand read's own goroutine then polls
// for its completion itself for a short while instead of sleeping until
// the connection's dispatcher wakes it, the busy-polling that
// latency-critical RDMA readers do. TryPoll fills out with the
// completions available now (0 for none) and returns the Conn's failure
// once it failed and is drained, like Poll. It may run beside Poll.
type TryPoller interface {
	TryPoll(out []Completion) (int, error)
}

// Transport is one backend.
type Transport interface {
	// Name is "tcp", "emu" or "verbs".
	Name() string
	// Register makes off-heap memory (mmap'd, see package offheap) a valid
	// read destination (an ibv_reg_mr on verbs). Unregister with Release.
	Register(buf []byte) (*Registration, error)
	// Dial connects and authenticates to a node.
	Dial(ctx context.Context, n NodeID) (Conn, error)
	// Close releases the transport; Conns must be closed first.
	Close() error
}

// Errors shared by all backends.
var (
	ErrClosed        = errors.New("connection closed")
	ErrNotRegistered = errors.New("destination buffer is not in registered memory (call Transport.Register)")
	ErrNoDevice      = errors.New("no RDMA device")
	ErrMixedSegments = errors.New("one PostReads call must address a single segment")
)

// Registration is a registered memory region.
type Registration struct {
	Buf  []byte
	LKey uint32 // verbs local key; 0 on stream transports
	// release is set by the backend.
	release func() error
	once    sync.Once
}

// NewRegistration is for backends: it wraps buf with a release hook.
func NewRegistration(buf []byte, lkey uint32, release func() error) *Registration {
	return &Registration{Buf: buf, LKey: lkey, release: release}
}

// Release unregisters the memory. The memory itself stays mapped.
func (r *Registration) Release() error {
	var err error
	r.once.Do(func() {
		if r.release != nil {
			err = r.release()
		}
	})
	return err
}

// Registry tracks registered ranges for backends that have no NIC to do it
// (tcp, emu), so that every backend rejects an unregistered destination the
// same way verbs would.
type Registry struct {
	mu     sync.RWMutex
	ranges map[uintptr]uintptr // start → end
}

// Register records buf, which must be off-heap (mmap'd) memory: the
// transport writes it from other goroutines while the caller reads it.
func (g *Registry) Register(buf []byte) (*Registration, error) {
	if len(buf) == 0 {
		return nil, fmt.Errorf("register an empty buffer")
	}
	start := offheap.AddrOf(buf)
	g.mu.Lock()
	if g.ranges == nil {
		g.ranges = map[uintptr]uintptr{}
	}
	g.ranges[start] = start + uintptr(len(buf))
	g.mu.Unlock()
	return NewRegistration(buf, 0, func() error {
		g.mu.Lock()
		delete(g.ranges, start)
		g.mu.Unlock()
		return nil
	}), nil
}

// Check returns ErrNotRegistered unless dst lies inside one registered range.
func (g *Registry) Check(dst []byte) error {
	if len(dst) == 0 {
		return fmt.Errorf("empty destination")
	}
	a := offheap.AddrOf(dst)
	e := a + uintptr(len(dst))
	g.mu.RLock()
	defer g.mu.RUnlock()
	for s, end := range g.ranges {
		if a >= s && e <= end {
			return nil
		}
	}
	return ErrNotRegistered
}

// PollAll polls c until n completions arrived or ctx ends; for tests and
// simple callers.
func PollAll(ctx context.Context, c Conn, n int) ([]Completion, error) {
	out := make([]Completion, 0, n)
	buf := make([]Completion, 64)
	for len(out) < n {
		k, err := c.Poll(ctx, buf)
		out = append(out, buf[:k]...)
		if err != nil && len(out) < n {
			return out, err
		}
	}
	return out, nil
}
