package rdma

import (
	"errors"
)

// The prefetch queue: background reads posted only while no demand read is
// in flight.

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
		p.err = errors.New("prefetch queue full")
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
