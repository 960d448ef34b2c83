package rdma

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Fault is what a Faults decorator does to one node.
type Fault struct {
	// Down refuses new connections and fails posts on existing ones.
	Down bool
	// Blackhole accepts posts and never completes them (a hung node); only
	// a timeout (and Close) ends them.
	Blackhole bool
	// Corrupt flips the first byte of every destination before completing.
	Corrupt bool
	// Delay holds every completion back this long.
	Delay time.Duration
}

// ErrInjected marks failures made by Faults.
var ErrInjected = errors.New("injected fault")

// Faults decorates a Transport with per-node fault injection, for tests of
// replication, erasure coding and timeouts.
type Faults struct {
	Transport
	mu    sync.Mutex
	rules map[NodeID]Fault
}

// NewFaults wraps t.
func NewFaults(t Transport) *Faults { return &Faults{Transport: t, rules: map[NodeID]Fault{}} }

// Set replaces n's fault (the zero Fault heals it).
func (f *Faults) Set(n NodeID, r Fault) {
	f.mu.Lock()
	f.rules[n] = r
	f.mu.Unlock()
}

func (f *Faults) rule(n NodeID) Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rules[n]
}

// Dial implements Transport.
func (f *Faults) Dial(ctx context.Context, n NodeID) (Conn, error) {
	if f.rule(n).Down {
		return nil, fmt.Errorf("%w: node %s is down", ErrInjected, n)
	}
	c, err := f.Transport.Dial(ctx, n)
	if err != nil {
		return nil, err
	}
	return &faultConn{Conn: c, f: f, dsts: map[uint64][]byte{}}, nil
}

type faultConn struct {
	Conn
	f    *Faults
	mu   sync.Mutex
	dsts map[uint64][]byte
	held []Completion // blackholed, released by Close
	shut bool
}

func (c *faultConn) PostReads(ops []ReadOp) error {
	r := c.f.rule(c.Node())
	if r.Down {
		return fmt.Errorf("%w: node %s is down", ErrInjected, c.Node())
	}
	c.mu.Lock()
	if r.Blackhole {
		for _, op := range ops {
			c.held = append(c.held, Completion{Cookie: op.Cookie, Err: ErrClosed})
		}
		c.mu.Unlock()
		return nil
	}
	if r.Corrupt {
		for _, op := range ops {
			c.dsts[op.Cookie] = op.Dst
		}
	}
	c.mu.Unlock()
	return c.Conn.PostReads(ops)
}

func (c *faultConn) Poll(ctx context.Context, out []Completion) (int, error) {
	c.mu.Lock()
	if c.shut && len(c.held) > 0 {
		n := copy(out, c.held)
		c.held = c.held[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	n, err := c.Conn.Poll(ctx, out)
	r := c.f.rule(c.Node())
	c.mu.Lock()
	for i := range out[:n] {
		if d, ok := c.dsts[out[i].Cookie]; ok {
			delete(c.dsts, out[i].Cookie)
			if out[i].Err == nil && len(d) > 0 {
				d[0] ^= 0xff
			}
		}
	}
	if err != nil && len(c.held) > 0 && n == 0 {
		n = copy(out, c.held)
		c.held = c.held[n:]
		err = nil
	}
	c.mu.Unlock()
	if r.Delay > 0 && n > 0 {
		time.Sleep(r.Delay)
	}
	return n, err
}

func (c *faultConn) Close() error {
	c.mu.Lock()
	c.shut = true
	c.mu.Unlock()
	return c.Conn.Close()
}
