package emu

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/wire"
)

// Model is the latency/bandwidth model of one connection.
type Model struct {
	Base      time.Duration // unloaded one-sided READ latency excluding serialisation
	PerOp     time.Duration // NIC processing per work request in a chain
	Bandwidth float64       // bytes per second of the link
	Jitter    time.Duration // mean of the exponential jitter
	Seed      uint64
}

// DefaultModel is a ConnectX-5/6-class RC READ on 100 Gb/s: see docs/rdma.md.
func DefaultModel() Model {
	return Model{Base: 2500 * time.Nanosecond, PerOp: 20 * time.Nanosecond, Bandwidth: 100e9 / 8, Jitter: 200 * time.Nanosecond, Seed: 1}
}

// Wire is the serialisation time of n bytes.
func (m Model) Wire(n int) time.Duration {
	return time.Duration(float64(n) / m.Bandwidth * 1e9)
}

// jitter maps a uniform u in [0,1) to the capped exponential jitter.
func (m Model) jitter(u float64) time.Duration {
	j := -math.Log(1-u) * float64(m.Jitter)
	return time.Duration(math.Min(j, 20*float64(m.Jitter)))
}

// Transport is the emulated backend. Add nodes with AddNode.
type Transport struct {
	model Model
	reg   rdma.Registry
	mu    sync.Mutex
	nodes map[rdma.NodeID]*memnode.Store
	seq   uint64
}

// New returns an emulated transport.
func New(m Model) *Transport {
	return &Transport{model: m, nodes: map[rdma.NodeID]*memnode.Store{}}
}

// AddNode makes store reachable as id.
func (t *Transport) AddNode(id rdma.NodeID, s *memnode.Store) {
	t.mu.Lock()
	t.nodes[id] = s
	t.mu.Unlock()
}

// RemoveNode makes id unreachable for new connections (a crashed node).
func (t *Transport) RemoveNode(id rdma.NodeID) {
	t.mu.Lock()
	delete(t.nodes, id)
	t.mu.Unlock()
}

// Name implements rdma.Transport.
func (t *Transport) Name() string { return "emu" }

// Register implements rdma.Transport.
func (t *Transport) Register(buf []byte) (*rdma.Registration, error) { return t.reg.Register(buf) }

// Close implements rdma.Transport.
func (t *Transport) Close() error { return nil }

// Dial implements rdma.Transport.
func (t *Transport) Dial(ctx context.Context, n rdma.NodeID) (rdma.Conn, error) {
	t.mu.Lock()
	s := t.nodes[n]
	t.seq++
	seed := t.model.Seed + t.seq
	t.mu.Unlock()
	if s == nil {
		return nil, errors.New("no such node in the emulated cluster")
	}
	return &Conn{t: t, node: n, store: s, rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)), notify: make(chan struct{}, 1)}, nil
}

type due struct {
	at time.Time
	c  rdma.Completion
}

// Conn is an emulated queue pair.
type Conn struct {
	t     *Transport
	node  rdma.NodeID
	store *memnode.Store

	mu       sync.Mutex
	rng      *rand.Rand
	linkFree time.Time
	lastDue  time.Time
	q        []due
	closed   bool
	notify   chan struct{}
	modelled []time.Duration // per-batch modelled latency, for tests
}

// Node implements rdma.Conn.
func (c *Conn) Node() rdma.NodeID { return c.node }

// Modelled returns the modelled latency of every batch posted so far.
func (c *Conn) Modelled() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.modelled...)
}

// PostReads implements rdma.Conn: the bytes are copied now and released at
// the modelled time.
func (c *Conn) PostReads(ops []rdma.ReadOp) error {
	if len(ops) == 0 {
		return nil
	}
	if len(ops) > wire.MaxBatch {
		return fmt.Errorf("batch of %d reads exceeds %d", len(ops), wire.MaxBatch)
	}
	bytes := 0
	for _, op := range ops {
		if op.Seg.ID != ops[0].Seg.ID {
			return rdma.ErrMixedSegments
		}
		if err := c.t.reg.Check(op.Dst); err != nil {
			return err
		}
		bytes += len(op.Dst)
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return rdma.ErrClosed
	}
	errs := make([]error, len(ops))
	for i, op := range ops {
		errs[i] = c.store.ReadAt(uint64(op.Seg.ID), op.Off, op.Dst)
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return rdma.ErrClosed
	}
	m := c.t.model
	start := now
	if c.linkFree.After(start) {
		start = c.linkFree
	}
	w := m.Wire(bytes)
	c.linkFree = start.Add(w)
	at := start.Add(w + m.Base + time.Duration(len(ops))*m.PerOp + m.jitter(c.rng.Float64()))
	if at.Before(c.lastDue) {
		at = c.lastDue
	}
	c.lastDue = at
	c.modelled = append(c.modelled, at.Sub(now))
	for i, op := range ops {
		c.q = append(c.q, due{at: at, c: rdma.Completion{Cookie: op.Cookie, Err: errs[i]}})
	}
	select {
	case c.notify <- struct{}{}:
	default:
	}
	return nil
}

// TryPoll implements rdma.TryPoller: the completions due now.
func (c *Conn) TryPoll(out []rdma.Completion) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.take(out, time.Now())
	if n == 0 && c.closed {
		return 0, rdma.ErrClosed
	}
	return n, nil
}

// take moves the completions due at now (all of them once closed, with
// ErrClosed) into out and returns how many; c.mu is held.
func (c *Conn) take(out []rdma.Completion, now time.Time) int {
	n := 0
	for n < len(out) && n < len(c.q) && (c.closed || !c.q[n].at.After(now)) {
		out[n] = c.q[n].c
		if c.closed {
			out[n].Err = rdma.ErrClosed
		}
		n++
	}
	c.q = c.q[:copy(c.q, c.q[n:])]
	return n
}

// Poll implements rdma.Conn.
func (c *Conn) Poll(ctx context.Context, out []rdma.Completion) (int, error) {
	for {
		c.mu.Lock()
		if len(c.q) == 0 {
			closed := c.closed
			c.mu.Unlock()
			if closed {
				return 0, rdma.ErrClosed
			}
			select {
			case <-c.notify:
				continue
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		at := c.q[0].at
		now := time.Now()
		if !now.Before(at) || c.closed {
			n := c.take(out, now)
			c.mu.Unlock()
			return n, nil
		}
		c.mu.Unlock()
		if wait := at.Sub(now); wait > 200*time.Microsecond {
			select {
			case <-time.After(wait - 100*time.Microsecond):
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		} else {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			runtime.Gosched()
		}
	}
}

// Write implements rdma.Conn; it takes the modelled time of the transfer.
func (c *Conn) Write(ctx context.Context, w *rdma.WriteSegment) (rdma.SegmentRef, error) {
	if w.PageSize <= 0 || len(w.Data)%w.PageSize != 0 || len(w.Data)/w.PageSize != len(w.Digests) {
		return rdma.SegmentRef{}, fmt.Errorf("inconsistent segment")
	}
	if _, _, err := c.store.Put(&wire.Put{Segment: uint64(w.ID), PageSize: uint32(w.PageSize), Digests: w.Digests, Data: w.Data}); err != nil {
		return rdma.SegmentRef{}, err
	}
	time.Sleep(c.t.model.Wire(len(w.Data)) + c.t.model.Base)
	return rdma.SegmentRef{ID: w.ID, Len: uint64(len(w.Data))}, nil
}

// Delete implements rdma.Conn.
func (c *Conn) Delete(ctx context.Context, id rdma.SegmentID) error {
	return c.store.Delete(uint64(id))
}

// Close implements rdma.Conn: queued completions are released at once with
// ErrClosed.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
	return nil
}

// ListFrom implements rdma.Inventory from the node's store (an in-process
// node watches no catalog: nothing is marked referenced).
func (c *Conn) ListFrom(ctx context.Context, from rdma.SegmentID, max int) (rdma.ListPage, error) {
	if max <= 0 || max > wire.MaxListPage {
		max = wire.MaxListPage
	}
	ms, more, next := c.store.List(uint64(from), max)
	p := rdma.ListPage{More: more, Next: rdma.SegmentID(next)}
	for _, m := range ms {
		p.Segments = append(p.Segments, rdma.StoredSegment{ID: rdma.SegmentID(m.ID), Len: m.Len, PageSize: int(m.PageSize), Writer: m.Writer, Stored: m.PutAt})
	}
	return p, nil
}

// Usage implements rdma.Inventory.
func (c *Conn) Usage(ctx context.Context) (rdma.NodeUsage, error) {
	return rdma.NodeUsage{Capacity: c.store.Capacity(), Used: c.store.Used(), Segments: uint64(c.store.Segments())}, nil
}
