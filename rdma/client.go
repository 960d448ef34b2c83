package rdma

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
)

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
	// Membership makes Nodes the starting point of a list that follows
	// the control plane (Client.SetNodes): the client may start with no
	// node, and the node count is checked when a segment is published.
	Membership bool
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

	nmu     sync.RWMutex
	members []NodeID // where new segments may go (Options.Nodes, SetNodes)

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
	closeOnce                                                                   sync.Once
}

// NewClient starts a client and its prefetch worker.
func NewClient(o Options) (*Client, error) {
	if o.Transport == nil || (len(o.Nodes) == 0 && !o.Membership) {
		return nil, errors.New("client needs a transport and at least one node")
	}
	if o.Replicas <= 0 {
		o.Replicas = 2
	}
	if o.EC != nil && (o.EC.Data < 1 || o.EC.Parity < 1) {
		return nil, fmt.Errorf("EC %d+%d: want at least one data and one parity shard", o.EC.Data, o.EC.Parity)
	}
	if !o.Membership {
		if err := enoughNodes(&o, len(o.Nodes)); err != nil {
			return nil, err
		}
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
	c.members = slices.Clone(o.Nodes)
	c.pwg.Add(1)
	go c.prefetchLoop()
	return c, nil
}

// Close stops the prefetch worker and closes every connection. Closing
// again does nothing.
func (c *Client) Close() error {
	c.closeOnce.Do(c.close)
	return nil
}

func (c *Client) close() {
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
	c.freeScratch()
	c.smu.Unlock()
}

// Stats returns the counters.
func (c *Client) Stats() Stats {
	return Stats{Pages: c.pages.Load(), Batches: c.batches.Load(), Failovers: c.failovers.Load(), DigestFailures: c.digestFail.Load(),
		Timeouts: c.timeouts.Load(), NodeErrors: c.nodeErrs.Load(), Reconstructions: c.recon.Load(), PrefetchPages: c.prefPages.Load()}
}

// Latency is the per-page read latency histogram of a priority class: from
// the call to the moment the page's bytes were verified (failover included).
func (c *Client) Latency(p Priority) *Histogram { return &c.hist[p] }

// enoughNodes checks that n nodes can hold a segment under o.
func enoughNodes(o *Options, n int) error {
	if o.EC != nil {
		if o.EC.Data+o.EC.Parity > n {
			return fmt.Errorf("EC %d+%d needs at least %d nodes, have %d", o.EC.Data, o.EC.Parity, o.EC.Data+o.EC.Parity, n)
		}
	} else if o.Replicas > n {
		return fmt.Errorf("%d replicas need at least %d nodes, have %d", o.Replicas, o.Replicas, n)
	}
	return nil
}

// Nodes returns the nodes new segments may be placed on.
func (c *Client) Nodes() []NodeID {
	c.nmu.RLock()
	defer c.nmu.RUnlock()
	return slices.Clone(c.members)
}

// SetNodes replaces the nodes new segments may be placed on (membership
// from the control plane). Segments already stored are read where their
// SegmentInfo says, whether or not their nodes are still listed.
func (c *Client) SetNodes(ids []NodeID) {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	c.nmu.Lock()
	old := c.members
	c.members = ids
	c.nmu.Unlock()
	if !slices.Equal(old, ids) {
		c.log.Info("memory nodes for new segments", "nodes", ids, "before", old)
	}
}
