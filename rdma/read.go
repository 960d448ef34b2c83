package rdma

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Demand reads and the replicated read path (failover across copies).

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
			return fmt.Errorf("page %d outside segment %#x of %d pages", r.Page, seg.ID, seg.Pages)
		}
		if len(r.Dst) != seg.PageSize {
			return fmt.Errorf("destination of %d bytes for a %d-byte page", len(r.Dst), seg.PageSize)
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
	return fmt.Errorf("reading segment %#x: %d of %d pages unreadable on all %d replicas: %w", seg.ID, len(pending), len(reqs), len(seg.Replicas), lastErr)
}
