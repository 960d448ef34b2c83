package rdma

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/reedsolomon"
	"golang.org/x/sys/unix"
)

// Digest is the per-page digest used everywhere in the cold tier.
func Digest(page []byte) uint64 { return xxhash.Sum64(page) }

// Priority orders reads. Demand reads never wait for prefetch reads: they
// use their own connection (queue pair) to every node, and the prefetch
// queue posts nothing while a demand read is in flight.
type Priority int

// Priorities.
const (
	Demand Priority = iota
	Prefetch
)

// Options configures a Client.
type Options struct {
	Transport Transport
	Nodes     []NodeID // memory nodes of the pod's cold tier
	// Replicas is R, copies per segment (default 2). Ignored with EC.
	Replicas int
	// EC, when non-nil, stores segments Reed–Solomon coded instead of
	// replicated: Data shards + Parity shards on distinct nodes.
	EC *ECConfig
	// ReadTimeout bounds one attempt at one node (default 250 ms); after it
	// the connection is torn down and the read fails over.
	ReadTimeout time.Duration
	// DownFor is how long a node that failed, timed out or returned a page
	// that fails its digest is tried last (default 2 s).
	DownFor time.Duration
	// MaxBatch bounds the reads per posted batch (default and max 1024).
	MaxBatch int
	// Place, if set, orders the candidate nodes for a new replicated
	// segment of n bytes (capacity-aware placement by the control plane);
	// nodes it leaves out follow in rendezvous order.
	Place func(id SegmentID, n int) []NodeID
	// PrefetchQueue is the prefetch queue length (default 4096 requests).
	PrefetchQueue int
	Logger        *slog.Logger
}

// ECConfig selects Reed–Solomon coding.
type ECConfig struct{ Data, Parity int }

// Replica is one stored copy (or shard) of a segment.
type Replica struct {
	Node NodeID
	Ref  SegmentRef
}

// SegmentInfo is everything a reader needs to read and verify a segment;
// it is what the control plane stores in its catalog.
type SegmentInfo struct {
	ID       SegmentID
	PageSize int
	Pages    int
	Digests  []uint64  // per page
	Replicas []Replica // replicated layout
	EC       *ECLayout // erasure-coded layout (Replicas empty)
}

// ECLayout places a coded segment: page p is row p%ShardPages of data shard
// p/ShardPages; every shard has a digest per row.
type ECLayout struct {
	Data, Parity int
	ShardPages   int
	Shards       []Replica  // Data+Parity
	ShardDigests [][]uint64 // [shard][row]
}

// PageRead asks for one page into Dst (len(Dst) == PageSize, registered).
type PageRead struct {
	Page int
	Dst  []byte
}

// Stats are cumulative client counters.
type Stats struct {
	Pages, Batches, Failovers, DigestFailures, Timeouts, NodeErrors, Reconstructions, PrefetchPages uint64
}

// Client reads and publishes cold segments with replication or coding,
// digest verification and failover. It is safe for concurrent use.
type Client struct {
	o   Options
	log *slog.Logger
	ctx context.Context
	end context.CancelFunc

	mu    sync.Mutex
	nodes map[NodeID]*node

	dmu      sync.Mutex
	dcond    *sync.Cond
	inflight int // demand reads in flight

	pq   chan *prefetchReq
	pwg  sync.WaitGroup
	hist [2]Histogram

	smu     sync.Mutex
	scratch *offheap.Mapping
	sreg    *Registration

	pages, batches, failovers, digestFail, timeouts, nodeErrs, recon, prefPages atomic.Uint64
}

type node struct {
	id        NodeID
	mu        sync.Mutex
	conns     [2]*cconn
	downUntil time.Time
}

type cconn struct {
	c        Conn
	mu       sync.Mutex
	attempts map[uint64]*attempt
	next     uint64
	dead     bool
}

type attempt struct {
	errs []error
	got  []bool
	left int
	done chan struct{}
}

const cookieBits = 10 // MaxBatch ≤ 1<<cookieBits

// NewClient starts a client and its prefetch worker.
func NewClient(o Options) (*Client, error) {
	if o.Transport == nil || len(o.Nodes) == 0 {
		return nil, errors.New("rdma: client needs a transport and at least one node")
	}
	if o.Replicas <= 0 {
		o.Replicas = 2
	}
	if o.EC != nil {
		if o.EC.Data < 1 || o.EC.Parity < 1 || o.EC.Data+o.EC.Parity > len(o.Nodes) {
			return nil, fmt.Errorf("rdma: EC %d+%d needs at least %d nodes, have %d", o.EC.Data, o.EC.Parity, o.EC.Data+o.EC.Parity, len(o.Nodes))
		}
	} else if o.Replicas > len(o.Nodes) {
		return nil, fmt.Errorf("rdma: %d replicas need at least %d nodes, have %d", o.Replicas, o.Replicas, len(o.Nodes))
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 250 * time.Millisecond
	}
	if o.DownFor <= 0 {
		o.DownFor = 2 * time.Second
	}
	if o.MaxBatch <= 0 || o.MaxBatch > 1<<cookieBits {
		o.MaxBatch = 1 << cookieBits
	}
	if o.PrefetchQueue <= 0 {
		o.PrefetchQueue = 4096
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Client{o: o, log: o.Logger, nodes: map[NodeID]*node{}, pq: make(chan *prefetchReq, o.PrefetchQueue)}
	c.ctx, c.end = context.WithCancel(context.Background())
	c.dcond = sync.NewCond(&c.dmu)
	for _, n := range o.Nodes {
		c.nodes[n] = &node{id: n}
	}
	c.pwg.Add(1)
	go c.prefetchLoop()
	return c, nil
}

// Close stops the prefetch worker and closes every connection.
func (c *Client) Close() error {
	c.end()
	close(c.pq)
	c.dmu.Lock()
	c.dcond.Broadcast()
	c.dmu.Unlock()
	c.pwg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		n.mu.Lock()
		for i, cc := range n.conns {
			if cc != nil {
				cc.c.Close()
				n.conns[i] = nil
			}
		}
		n.mu.Unlock()
	}
	c.smu.Lock()
	if c.sreg != nil {
		c.sreg.Release()
		c.scratch.Unmap()
	}
	c.smu.Unlock()
	return nil
}

// Stats returns the counters.
func (c *Client) Stats() Stats {
	return Stats{Pages: c.pages.Load(), Batches: c.batches.Load(), Failovers: c.failovers.Load(), DigestFailures: c.digestFail.Load(),
		Timeouts: c.timeouts.Load(), NodeErrors: c.nodeErrs.Load(), Reconstructions: c.recon.Load(), PrefetchPages: c.prefPages.Load()}
}

// Latency is the per-page read latency histogram of a priority class: from
// the call to the moment the page's bytes were verified (failover included).
func (c *Client) Latency(p Priority) *Histogram { return &c.hist[p] }

// ---- connections -------------------------------------------------------------

func (c *Client) node(id NodeID) *node {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[id]
	if n == nil {
		n = &node{id: id}
		c.nodes[id] = n
	}
	return n
}

func (c *Client) markDown(n *node, why string, err error) {
	n.mu.Lock()
	n.downUntil = time.Now().Add(c.o.DownFor)
	n.mu.Unlock()
	c.log.Warn("memory node marked down; reads fail over", "node", n.id, "why", why, "for", c.o.DownFor, "err", err)
}

func (n *node) isDown() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return time.Now().Before(n.downUntil)
}

func (c *Client) conn(ctx context.Context, n *node, p Priority) (*cconn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if cc := n.conns[p]; cc != nil && !cc.isDead() {
		return cc, nil
	}
	dctx, cancel := context.WithTimeout(ctx, c.o.ReadTimeout*4)
	defer cancel()
	cn, err := c.o.Transport.Dial(dctx, n.id)
	if err != nil {
		return nil, err
	}
	cc := &cconn{c: cn, attempts: map[uint64]*attempt{}}
	n.conns[p] = cc
	go c.dispatch(cc)
	return cc, nil
}

func (cc *cconn) isDead() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.dead
}

// drop tears a connection down; Close guarantees no later buffer writes.
func (c *Client) drop(n *node, p Priority, cc *cconn) {
	n.mu.Lock()
	if n.conns[p] == cc {
		n.conns[p] = nil
	}
	n.mu.Unlock()
	cc.c.Close()
}

// dispatch routes completions of one connection to their attempts.
func (c *Client) dispatch(cc *cconn) {
	buf := make([]Completion, 256)
	for {
		k, err := cc.c.Poll(c.ctx, buf)
		cc.mu.Lock()
		for _, cp := range buf[:k] {
			a := cc.attempts[cp.Cookie>>cookieBits]
			i := int(cp.Cookie & (1<<cookieBits - 1))
			if a == nil || i >= len(a.got) || a.got[i] {
				continue
			}
			a.got[i], a.errs[i] = true, cp.Err
			if a.left--; a.left == 0 {
				delete(cc.attempts, cp.Cookie>>cookieBits)
				close(a.done)
			}
		}
		if err != nil {
			cc.dead = true
			for id, a := range cc.attempts {
				for i := range a.got {
					if !a.got[i] {
						a.got[i], a.errs[i] = true, err
					}
				}
				close(a.done)
				delete(cc.attempts, id)
			}
			cc.mu.Unlock()
			if c.ctx.Err() == nil && !errors.Is(err, ErrClosed) {
				cc.c.Close()
			}
			return
		}
		cc.mu.Unlock()
	}
}

// fetch posts ops (one segment) to a node in batches and waits for all of
// them; it returns a per-op error (nil: the bytes landed, not yet verified).
func (c *Client) fetch(ctx context.Context, n *node, ops []ReadOp, p Priority) []error {
	errs := make([]error, len(ops))
	fill := func(err error) []error {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	cc, err := c.conn(ctx, n, p)
	if err != nil {
		c.nodeErrs.Add(1)
		c.markDown(n, "dial", err)
		return fill(err)
	}
	var as []*attempt
	for lo := 0; lo < len(ops); lo += c.o.MaxBatch {
		chunk := ops[lo:min(lo+c.o.MaxBatch, len(ops))]
		a := &attempt{errs: make([]error, len(chunk)), got: make([]bool, len(chunk)), left: len(chunk), done: make(chan struct{})}
		cc.mu.Lock()
		if cc.dead {
			cc.mu.Unlock()
			return fill(ErrClosed)
		}
		cc.next++
		id := cc.next
		cc.attempts[id] = a
		cc.mu.Unlock()
		for i := range chunk {
			chunk[i].Cookie = id<<cookieBits | uint64(i)
		}
		if err := cc.c.PostReads(chunk); err != nil {
			cc.mu.Lock()
			delete(cc.attempts, id)
			cc.mu.Unlock()
			for i := range chunk {
				errs[lo+i] = err
			}
			if errors.Is(err, ErrNotRegistered) || errors.Is(err, ErrMixedSegments) {
				return fill(err) // caller bug: failing over would not help
			}
			c.nodeErrs.Add(1)
			c.markDown(n, "post", err)
			c.drop(n, p, cc)
			break
		}
		c.batches.Add(1)
		as = append(as, a)
	}
	timer := time.NewTimer(c.o.ReadTimeout)
	defer timer.Stop()
	for _, a := range as {
		select {
		case <-a.done:
		case <-timer.C:
			c.timeouts.Add(1)
			c.markDown(n, "timeout", fmt.Errorf("no completion within %v", c.o.ReadTimeout))
			c.drop(n, p, cc) // completes every outstanding attempt with ErrClosed
			<-a.done
		case <-ctx.Done():
			c.drop(n, p, cc)
			<-a.done
		}
	}
	lo := 0
	var failed error
	for _, a := range as {
		for i, e := range a.errs {
			if errs[lo+i] == nil {
				errs[lo+i] = e
			}
			if e != nil && failed == nil && !errors.Is(e, ErrClosed) {
				failed = e
			}
		}
		lo += len(a.errs)
	}
	if failed != nil && ctx.Err() == nil {
		c.nodeErrs.Add(1)
		c.markDown(n, "read error", failed)
	}
	return errs
}

// ---- reads -------------------------------------------------------------------

// Pending is an asynchronous read.
type Pending struct {
	done chan struct{}
	err  error
}

// Done is closed when the read finished.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Err is the read's result after Done.
func (p *Pending) Err() error { <-p.done; return p.err }

// Wait waits for the read or ctx.
func (p *Pending) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Read reads pages of seg synchronously at demand priority.
func (c *Client) Read(ctx context.Context, seg *SegmentInfo, reqs []PageRead) error {
	c.demandStart()
	defer c.demandEnd()
	return c.read(ctx, seg, reqs, Demand)
}

// ReadAsync starts a demand read and returns at once.
func (c *Client) ReadAsync(ctx context.Context, seg *SegmentInfo, reqs []PageRead) *Pending {
	p := &Pending{done: make(chan struct{})}
	c.demandStart()
	go func() {
		defer c.demandEnd()
		p.err = c.read(ctx, seg, reqs, Demand)
		close(p.done)
	}()
	return p
}

func (c *Client) demandStart() {
	c.dmu.Lock()
	c.inflight++
	c.dmu.Unlock()
}

func (c *Client) demandEnd() {
	c.dmu.Lock()
	if c.inflight--; c.inflight == 0 {
		c.dcond.Broadcast()
	}
	c.dmu.Unlock()
}

func (c *Client) checkReqs(seg *SegmentInfo, reqs []PageRead) error {
	for _, r := range reqs {
		if r.Page < 0 || r.Page >= seg.Pages {
			return fmt.Errorf("rdma: page %d outside segment %#x of %d pages", r.Page, seg.ID, seg.Pages)
		}
		if len(r.Dst) != seg.PageSize {
			return fmt.Errorf("rdma: destination of %d bytes for a %d-byte page", len(r.Dst), seg.PageSize)
		}
	}
	return nil
}

func (c *Client) read(ctx context.Context, seg *SegmentInfo, reqs []PageRead, p Priority) error {
	if err := c.checkReqs(seg, reqs); err != nil {
		return err
	}
	start := time.Now()
	var err error
	if seg.EC != nil {
		err = c.readEC(ctx, seg, reqs, p, start)
	} else {
		err = c.readReplicated(ctx, seg, reqs, p, start)
	}
	if err == nil {
		c.pages.Add(uint64(len(reqs)))
		if p == Prefetch {
			c.prefPages.Add(uint64(len(reqs)))
		}
	}
	return err
}

// order returns replicas healthy-first, rotated by segment for balance.
func (c *Client) order(seg *SegmentInfo) []Replica {
	r := len(seg.Replicas)
	var up, down []Replica
	for i := range r {
		rep := seg.Replicas[(int(uint64(seg.ID)%uint64(r))+i)%r]
		if c.node(rep.Node).isDown() {
			down = append(down, rep)
		} else {
			up = append(up, rep)
		}
	}
	return append(up, down...)
}

func (c *Client) readReplicated(ctx context.Context, seg *SegmentInfo, reqs []PageRead, p Priority, start time.Time) error {
	pending := make([]int, len(reqs))
	for i := range pending {
		pending[i] = i
	}
	var lastErr error
	for try, rep := range c.order(seg) {
		if try > 0 {
			c.failovers.Add(1)
		}
		n := c.node(rep.Node)
		ops := make([]ReadOp, len(pending))
		for i, ri := range pending {
			r := reqs[ri]
			ops[i] = ReadOp{Seg: rep.Ref, Off: uint64(r.Page) * uint64(seg.PageSize), Dst: r.Dst}
		}
		errs := c.fetch(ctx, n, ops, p)
		next := pending[:0:0]
		bad := false
		for i, ri := range pending {
			if errs[i] != nil {
				if errors.Is(errs[i], ErrNotRegistered) {
					return errs[i]
				}
				lastErr = errs[i]
				next = append(next, ri)
				continue
			}
			r := reqs[ri]
			if Digest(r.Dst) != seg.Digests[r.Page] {
				c.digestFail.Add(1)
				lastErr = fmt.Errorf("page %d from %s fails its digest", r.Page, rep.Node)
				bad = true
				next = append(next, ri)
				continue
			}
			c.hist[p].Record(time.Since(start))
		}
		if bad {
			c.markDown(n, "digest mismatch", lastErr)
		}
		pending = next
		if len(pending) == 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return fmt.Errorf("rdma: %d of %d pages of segment %#x unreadable on all %d replicas: %w", len(pending), len(reqs), seg.ID, len(seg.Replicas), lastErr)
}

// ---- prefetch ----------------------------------------------------------------

type prefetchReq struct {
	seg  *SegmentInfo
	reqs []PageRead
	p    *Pending
}

// Prefetch queues a background read. It never blocks (a full queue refuses
// the request with an error in the Pending) and its reads are posted only
// while no demand read is in flight, on separate connections.
func (c *Client) Prefetch(seg *SegmentInfo, reqs []PageRead) *Pending {
	p := &Pending{done: make(chan struct{})}
	if err := c.checkReqs(seg, reqs); err != nil {
		p.err = err
		close(p.done)
		return p
	}
	select {
	case c.pq <- &prefetchReq{seg: seg, reqs: reqs, p: p}:
	default:
		p.err = errors.New("rdma: prefetch queue full")
		close(p.done)
	}
	return p
}

// PrefetchBacklog is the number of queued prefetch requests.
func (c *Client) PrefetchBacklog() int { return len(c.pq) }

func (c *Client) prefetchLoop() {
	defer c.pwg.Done()
	for r := range c.pq {
		c.dmu.Lock()
		for c.inflight > 0 && c.ctx.Err() == nil {
			c.dcond.Wait()
		}
		c.dmu.Unlock()
		if c.ctx.Err() != nil {
			r.p.err = ErrClosed
		} else {
			r.p.err = c.read(c.ctx, r.seg, r.reqs, Prefetch)
		}
		close(r.p.done)
	}
}

// ---- publishing --------------------------------------------------------------

// rank orders nodes for a segment by rendezvous hashing (stable under node
// addition/removal), healthy nodes first.
func (c *Client) rank(id SegmentID) []NodeID {
	type sc struct {
		n NodeID
		s uint64
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(id))
	var up, down []sc
	for _, n := range c.o.Nodes {
		h := xxhash.New()
		h.Write(b[:])
		h.WriteString(string(n))
		e := sc{n, h.Sum64()}
		if c.node(n).isDown() {
			down = append(down, e)
		} else {
			up = append(up, e)
		}
	}
	cmp := func(a, b sc) int {
		if a.s > b.s {
			return -1
		}
		if a.s < b.s {
			return 1
		}
		return 0
	}
	slices.SortFunc(up, cmp)
	slices.SortFunc(down, cmp)
	var out []NodeID
	for _, e := range append(up, down...) {
		out = append(out, e.n)
	}
	return out
}

func (c *Client) writeOn(ctx context.Context, n NodeID, w *WriteSegment) (SegmentRef, error) {
	nd := c.node(n)
	cc, err := c.conn(ctx, nd, Demand)
	if err != nil {
		c.markDown(nd, "dial", err)
		return SegmentRef{}, err
	}
	return cc.c.Write(ctx, w)
}

// PageDigests returns the digest of every page of data.
func PageDigests(data []byte, pageSize int) []uint64 {
	d := make([]uint64, len(data)/pageSize)
	for i := range d {
		d[i] = Digest(data[i*pageSize : (i+1)*pageSize])
	}
	return d
}

// Publish stores an immutable segment on R nodes (or as EC shards) and
// returns the SegmentInfo readers need. len(data) must be a multiple of
// pageSize. It fails unless every copy (every shard) was stored.
func (c *Client) Publish(ctx context.Context, id SegmentID, pageSize int, data []byte) (*SegmentInfo, error) {
	if pageSize <= 0 || len(data) == 0 || len(data)%pageSize != 0 {
		return nil, fmt.Errorf("rdma: segment of %d bytes is not a whole number of %d-byte pages", len(data), pageSize)
	}
	seg := &SegmentInfo{ID: id, PageSize: pageSize, Pages: len(data) / pageSize, Digests: PageDigests(data, pageSize)}
	if c.o.EC != nil {
		return seg, c.publishEC(ctx, seg, data)
	}
	w := &WriteSegment{ID: id, PageSize: pageSize, Data: data, Digests: seg.Digests}
	type res struct {
		n   NodeID
		ref SegmentRef
		err error
	}
	cands := c.rank(id)
	if c.o.Place != nil {
		// Capacity-aware placement from the control plane; the rendezvous
		// order stays behind it as the fallback for full or failing nodes.
		if pl := c.o.Place(id, len(data)); len(pl) > 0 {
			seen := map[NodeID]bool{}
			ordered := make([]NodeID, 0, len(cands))
			for _, n := range append(pl, cands...) {
				if !seen[n] && slices.Contains(cands, n) {
					seen[n] = true
					ordered = append(ordered, n)
				}
			}
			cands = ordered
		}
	}
	next := 0
	var errs []error
	for len(seg.Replicas) < c.o.Replicas && next < len(cands) {
		want := c.o.Replicas - len(seg.Replicas)
		ch := make(chan res, want)
		launched := 0
		for ; launched < want && next < len(cands); next++ {
			n := cands[next]
			launched++
			go func() {
				ref, err := c.writeOn(ctx, n, w)
				ch <- res{n, ref, err}
			}()
		}
		for range launched {
			r := <-ch
			if r.err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", r.n, r.err))
				continue
			}
			seg.Replicas = append(seg.Replicas, Replica{Node: r.n, Ref: r.ref})
		}
	}
	if len(seg.Replicas) < c.o.Replicas {
		return nil, fmt.Errorf("rdma: segment %#x stored on %d of %d replicas: %w", id, len(seg.Replicas), c.o.Replicas, errors.Join(errs...))
	}
	slices.SortFunc(seg.Replicas, func(a, b Replica) int {
		if a.Node < b.Node {
			return -1
		}
		if a.Node > b.Node {
			return 1
		}
		return 0
	})
	return seg, nil
}

// Delete removes a segment's copies (or shards) from their nodes.
func (c *Client) Delete(ctx context.Context, seg *SegmentInfo) error {
	reps := seg.Replicas
	if seg.EC != nil {
		reps = seg.EC.Shards
	}
	var errs []error
	for _, r := range reps {
		cc, err := c.conn(ctx, c.node(r.Node), Demand)
		if err == nil {
			err = cc.c.Delete(ctx, r.Ref.ID)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Node, err))
		}
	}
	return errors.Join(errs...)
}

// ---- Reed–Solomon ------------------------------------------------------------

// ShardID is the segment ID under which shard i of coded segment id is
// stored: a hash of both, with the top bit set so it never collides with a
// replicated segment's ID below 2^63.
func ShardID(id SegmentID, shard int) SegmentID {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], uint64(id))
	binary.LittleEndian.PutUint64(b[8:], uint64(shard))
	return SegmentID(xxhash.Sum64(b[:]) | 1<<63)
}

func (c *Client) publishEC(ctx context.Context, seg *SegmentInfo, data []byte) error {
	k, m := c.o.EC.Data, c.o.EC.Parity
	enc, err := reedsolomon.New(k, m)
	if err != nil {
		return err
	}
	ps := seg.PageSize
	rows := (seg.Pages + k - 1) / k
	shards := make([][]byte, k+m)
	for i := range shards {
		shards[i] = make([]byte, rows*ps)
		if i < k {
			lo := min(i*rows*ps, len(data))
			copy(shards[i], data[lo:min(lo+rows*ps, len(data))])
		}
	}
	if err := enc.Encode(shards); err != nil {
		return err
	}
	lay := &ECLayout{Data: k, Parity: m, ShardPages: rows, Shards: make([]Replica, k+m), ShardDigests: make([][]uint64, k+m)}
	nodes := c.rank(seg.ID)
	errs := make([]error, k+m)
	var wg sync.WaitGroup
	for i := range shards {
		lay.ShardDigests[i] = PageDigests(shards[i], ps)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &WriteSegment{ID: ShardID(seg.ID, i), PageSize: ps, Data: shards[i], Digests: lay.ShardDigests[i]}
			ref, err := c.writeOn(ctx, nodes[i], w)
			lay.Shards[i] = Replica{Node: nodes[i], Ref: ref}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("rdma: coded segment %#x: %w", seg.ID, err)
	}
	seg.EC = lay
	return nil
}

func (c *Client) readEC(ctx context.Context, seg *SegmentInfo, reqs []PageRead, p Priority, start time.Time) error {
	lay := seg.EC
	byShard := map[int][]int{}
	for i, r := range reqs {
		s := r.Page / lay.ShardPages
		byShard[s] = append(byShard[s], i)
	}
	var mu sync.Mutex
	var failed []int
	var wg sync.WaitGroup
	for s, idx := range byShard {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep := lay.Shards[s]
			n := c.node(rep.Node)
			ops := make([]ReadOp, len(idx))
			for j, ri := range idx {
				ops[j] = ReadOp{Seg: rep.Ref, Off: uint64(reqs[ri].Page%lay.ShardPages) * uint64(seg.PageSize), Dst: reqs[ri].Dst}
			}
			errs := c.fetch(ctx, n, ops, p)
			bad := false
			mu.Lock()
			defer mu.Unlock()
			for j, ri := range idx {
				if errs[j] == nil && Digest(reqs[ri].Dst) == seg.Digests[reqs[ri].Page] {
					c.hist[p].Record(time.Since(start))
					continue
				}
				if errs[j] == nil {
					c.digestFail.Add(1)
					bad = true
				}
				failed = append(failed, ri)
			}
			if bad {
				c.markDown(n, "digest mismatch", fmt.Errorf("shard %d", s))
			}
		}()
	}
	wg.Wait()
	for _, ri := range failed {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.failovers.Add(1)
		if err := c.reconstruct(ctx, seg, reqs[ri], p); err != nil {
			return err
		}
		c.hist[p].Record(time.Since(start))
	}
	return nil
}

// reconstruct rebuilds one page from the same row of the other shards:
// Reed–Solomon is byte-wise, so one row of every shard is itself a codeword.
func (c *Client) reconstruct(ctx context.Context, seg *SegmentInfo, r PageRead, p Priority) error {
	lay := seg.EC
	ps := seg.PageSize
	want := r.Page / lay.ShardPages
	row := r.Page % lay.ShardPages
	total := lay.Data + lay.Parity
	c.smu.Lock()
	defer c.smu.Unlock()
	if c.scratch == nil || c.scratch.Len() < total*ps {
		if c.sreg != nil {
			c.sreg.Release()
			c.scratch.Unmap()
			c.sreg, c.scratch = nil, nil
		}
		m, err := offheap.Anon(total*ps, unix.PROT_READ|unix.PROT_WRITE, 0)
		if err != nil {
			return err
		}
		reg, err := c.o.Transport.Register(m.B)
		if err != nil {
			m.Unmap()
			return err
		}
		c.scratch, c.sreg = m, reg
	}
	rows := make([][]byte, total)
	var wg sync.WaitGroup
	for s := range total {
		if s == want {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := c.scratch.B[s*ps : (s+1)*ps]
			rep := lay.Shards[s]
			errs := c.fetch(ctx, c.node(rep.Node), []ReadOp{{Seg: rep.Ref, Off: uint64(row) * uint64(ps), Dst: dst}}, p)
			if errs[0] == nil && Digest(dst) == lay.ShardDigests[s][row] {
				rows[s] = dst
			}
		}()
	}
	wg.Wait()
	have := 0
	for _, b := range rows {
		if b != nil {
			have++
		}
	}
	if have < lay.Data {
		return fmt.Errorf("rdma: page %d of coded segment %#x: only %d of the %d shards needed are readable", r.Page, seg.ID, have, lay.Data)
	}
	enc, err := reedsolomon.New(lay.Data, lay.Parity)
	if err != nil {
		return err
	}
	rows[want] = r.Dst[:0]
	if err := enc.ReconstructData(rows); err != nil {
		return fmt.Errorf("rdma: reconstruct page %d of %#x: %w", r.Page, seg.ID, err)
	}
	if len(rows[want]) != ps || &rows[want][0] != &r.Dst[0] {
		copy(r.Dst, rows[want])
	}
	if Digest(r.Dst) != seg.Digests[r.Page] {
		return fmt.Errorf("rdma: reconstructed page %d of %#x fails its digest", r.Page, seg.ID)
	}
	c.recon.Add(1)
	return nil
}
