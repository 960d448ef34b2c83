package rdma

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Connections: one per node and priority, each with a dispatcher routing
// completions to the batch (attempt) that posted them.

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
		return nil, fmt.Errorf("memory node %s: %w", n.id, err)
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

// deliver routes completions to their attempts (under cc.mu).
func (cc *cconn) deliver(cps []Completion) {
	for _, cp := range cps {
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
}

// spinFor is how long a demand read polls for its own completions
// (TryPoller) before it sleeps until the dispatcher wakes it: longer
// than an RDMA READ (a few µs) and the emulated one, shorter than a
// scheduler's wake-up on a loaded host (0.1-2 ms measured here).
const spinFor = 300 * time.Microsecond

// spin polls cc for a's completions on the calling goroutine, delivering
// every completion it takes (others' too), until a is done or spinFor
// passed; it reports whether a is done. The dispatcher keeps polling
// beside it, so a completion it takes first is delivered all the same.
func (cc *cconn) spin(a *attempt) bool {
	tp, ok := cc.c.(TryPoller)
	if !ok {
		return false
	}
	var buf [16]Completion
	for end := time.Now().Add(spinFor); ; {
		select {
		case <-a.done:
			return true
		default:
		}
		k, err := tp.TryPoll(buf[:])
		if k > 0 {
			cc.mu.Lock()
			cc.deliver(buf[:k])
			cc.mu.Unlock()
			continue
		}
		if err != nil || time.Now().After(end) {
			return false // the dispatcher fails the attempts of a failed Conn
		}
	}
}

// dispatch routes completions of one connection to their attempts.
func (c *Client) dispatch(cc *cconn) {
	buf := make([]Completion, 256)
	for {
		k, err := cc.c.Poll(c.ctx, buf)
		cc.mu.Lock()
		cc.deliver(buf[:k])
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
	cc, err := c.conn(ctx, n, p)
	if err != nil {
		c.nodeErrs.Add(1)
		c.markDown(n, "dial", err)
		return fillNil(errs, err)
	}
	as, err := c.post(n, p, cc, ops, errs)
	if err != nil {
		return fillNil(errs, err)
	}
	c.await(ctx, n, p, cc, as, errs)
	return errs
}

// fillNil sets every nil entry of errs to err.
func fillNil(errs []error, err error) []error {
	for i := range errs {
		if errs[i] == nil {
			errs[i] = err
		}
	}
	return errs
}

// post posts ops in batches of at most MaxBatch reads, one attempt per
// batch. A batch the transport refuses gets the error in errs and ends the
// posting (the node is marked down, the connection dropped). An error that
// failing over cannot cure (a dead connection, a caller bug) is returned:
// it stands for every op.
func (c *Client) post(n *node, p Priority, cc *cconn, ops []ReadOp, errs []error) ([]*attempt, error) {
	var as []*attempt
	for lo := 0; lo < len(ops); lo += c.o.MaxBatch {
		chunk := ops[lo:min(lo+c.o.MaxBatch, len(ops))]
		a := &attempt{errs: make([]error, len(chunk)), got: make([]bool, len(chunk)), left: len(chunk), done: make(chan struct{})}
		cc.mu.Lock()
		if cc.dead {
			cc.mu.Unlock()
			return nil, ErrClosed
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
			// Nothing from this batch on was posted: those ops failed with
			// err (not "no answer", which would read as a digest failure).
			for i := lo; i < len(ops); i++ {
				errs[i] = err
			}
			if errors.Is(err, ErrNotRegistered) || errors.Is(err, ErrMixedSegments) {
				return nil, err // caller bug: failing over would not help
			}
			c.nodeErrs.Add(1)
			c.markDown(n, "post", err)
			c.drop(n, p, cc)
			break
		}
		c.batches.Add(1)
		as = append(as, a)
	}
	return as, nil
}

// await waits for the posted attempts (the first ReadTimeout or ctx ends
// drop the connection, which completes them all) and copies their per-op
// results into errs; a node that answered a read with an error is marked
// down.
func (c *Client) await(ctx context.Context, n *node, p Priority, cc *cconn, as []*attempt, errs []error) {
	if p == Demand && len(as) == 1 && ctx.Err() == nil {
		cc.spin(as[0])
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
}
