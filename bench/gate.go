package bench

import (
	"bytes"
	"io"
	"sync"
)

// A verifyGate holds the VMs of one batch after their measured runs (guest
// run --hold-verify) until every VM of the batch is past its own: only
// then are their memories verified (each VM reads all of its memory, and
// its pager serves every page it had not touched), so that no VM's
// verification runs on another VM's clock. A VM that fails or exits
// without saying it is measured counts as past it.
type verifyGate struct {
	mu    sync.Mutex
	left  int
	holds []io.Closer
}

func newVerifyGate(n int) *verifyGate { return &verifyGate{left: n} }

// hold registers the standard input of a VM held at the gate: it is closed
// when the gate opens (at once if it is open).
func (g *verifyGate) hold(c io.Closer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.left <= 0 {
		c.Close()
		return
	}
	g.holds = append(g.holds, c)
}

// member returns the function a VM calls when its measured run is over;
// the calls after the first do nothing.
func (g *verifyGate) member() func() {
	var once sync.Once
	return func() { once.Do(g.arrive) }
}

func (g *verifyGate) arrive() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.left--; g.left == 0 {
		for _, c := range g.holds {
			c.Close()
		}
		g.holds = nil
	}
}

// lineWatch passes writes on to w and calls seen once a whole line equal
// to line has gone by.
type lineWatch struct {
	w    io.Writer
	line string
	seen func()
	buf  []byte // the current line, while it could still be line
	long bool   // the current line is longer than line
}

func (l *lineWatch) Write(b []byte) (int, error) {
	for rest := b; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		part := rest
		if i >= 0 {
			part, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		if !l.long {
			l.buf = append(l.buf, part...)
			l.long = len(l.buf) > len(l.line)
		}
		if i >= 0 {
			if !l.long && string(l.buf) == l.line {
				l.seen()
			}
			l.buf, l.long = l.buf[:0], false
		}
	}
	return l.w.Write(b)
}
