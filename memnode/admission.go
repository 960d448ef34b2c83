package memnode

import (
	"bufio"
	"bytes"
	"container/list"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/rdma/wire"
)

// Admission under abuse. A connection that has not proved knowledge of
// the pod secret yet holds little: small buffers, at most AuthTimeout to
// answer the challenge, and at most MaxUnauthenticated of them at once.
// When a new connection would exceed the cap, the oldest unauthenticated
// one is closed rather than the new one refused: a client that answers at
// once (one round trip) gets through a flood of idle connections, which
// would otherwise lock it out until their deadlines pass. Both outcomes
// are counted (auth_failures_total{reason="timeout"|"evicted"}) and logged
// at debug, with one warning a minute while the cap is being hit.

// Defaults of the admission limits.
const (
	DefaultMaxUnauthenticated = 256
	DefaultAuthTimeout        = 5 * time.Second
)

func admissionDefaults(c *Config) error {
	if c.MaxUnauthenticated < 0 || c.AuthTimeout < 0 {
		return fmt.Errorf("--max-unauthenticated %d and --auth-timeout %v must not be negative", c.MaxUnauthenticated, c.AuthTimeout)
	}
	if c.MaxUnauthenticated == 0 {
		c.MaxUnauthenticated = DefaultMaxUnauthenticated
	}
	if c.AuthTimeout == 0 {
		c.AuthTimeout = DefaultAuthTimeout
	}
	return nil
}

// pendingConn is a connection in admission.
type pendingConn struct {
	c       net.Conn
	elem    *list.Element
	evicted atomic.Bool
}

func (p *pendingConn) gone() bool { return p.evicted.Load() }

// pendingConns are the connections in admission, oldest first.
type pendingConns struct {
	mu       sync.Mutex
	l        list.List
	lastWarn time.Time
}

// add records c as in admission, closing the oldest such connection if
// the cap is reached.
func (ps *pendingConns) add(n *Node, c net.Conn) *pendingConn {
	p := &pendingConn{c: c}
	ps.mu.Lock()
	var victim *pendingConn
	if ps.l.Len() >= n.cfg.MaxUnauthenticated {
		victim = ps.l.Remove(ps.l.Front()).(*pendingConn)
		victim.elem = nil
		victim.evicted.Store(true)
		if time.Since(ps.lastWarn) > time.Minute {
			ps.lastWarn = time.Now()
			n.log.Warn("too many unauthenticated connections: closing the oldest ones (a client flood?)",
				"max_unauthenticated", n.cfg.MaxUnauthenticated, "auth_timeout", n.cfg.AuthTimeout)
		}
	}
	p.elem = ps.l.PushBack(p)
	ps.mu.Unlock()
	if victim != nil {
		victim.c.Close()
	} else {
		n.m.unauthenticated.Inc()
	}
	return p
}

// remove ends p's admission (admitted or refused).
func (ps *pendingConns) remove(n *Node, p *pendingConn) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p.elem != nil {
		ps.l.Remove(p.elem)
		p.elem = nil
		n.m.unauthenticated.Dec()
	}
}

// lost counts and logs a connection that ended in admission without a
// refusal to send: closed by its client, timed out, or evicted.
func (cs *connState) lost(p *pendingConn, err error) bool {
	reason := "closed"
	switch {
	case p.gone():
		reason = "evicted"
	case isTimeout(err):
		reason = "timeout"
	}
	cs.n.m.authFail.WithLabelValues(reason).Inc()
	cs.n.log.Debug("connection ended before admission", "remote", cs.remote, "reason", reason, "err", err)
	return false
}

// isClosed: the client went away without a word (EOF or reset).
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// grow gives an admitted connection its working buffers, keeping any bytes
// the client already sent after its answer.
func (cs *connState) grow() {
	var r io.Reader = cs.c
	if n := cs.br.Buffered(); n > 0 {
		b, _ := cs.br.Peek(n)
		r = io.MultiReader(bytes.NewReader(bytes.Clone(b)), cs.c)
	}
	cs.br = bufio.NewReaderSize(r, 64<<10)
	cs.bw = bufio.NewWriterSize(cs.c, 256<<10)
}

// admitTLS admits a client by mutual TLS within the admission deadline:
// the handshake verifies its certificate against the cluster CA, its
// identity (the certificate's CN) must be a host's, and the node then
// sends its Hello (the nonce unused), which tells the client it was
// admitted. Every refusal is logged and counted.
func (cs *connState) admitTLS(p *pendingConn) bool {
	n := cs.n
	tc := cs.c.(*tls.Conn)
	cs.c.SetDeadline(time.Now().Add(n.cfg.AuthTimeout))
	if err := tc.Handshake(); err != nil {
		if p.gone() || isTimeout(err) || isClosed(err) {
			return cs.lost(p, err)
		}
		n.m.authFail.WithLabelValues("tls").Inc()
		n.log.Warn("refused connection: TLS handshake failed (a client without a certificate of the cluster CA, or not speaking TLS)",
			"remote", cs.remote, "reason", "tls", "err", err)
		return false
	}
	who := PeerIdentity(tc.ConnectionState())
	if _, _, ok := ParseHostIdentity(who); !ok || len(who) > wire.MaxIdentity {
		n.m.authFail.WithLabelValues("wrong-role").Inc()
		msg := fmt.Sprintf("certificate %q is not a host's (want %q): memory nodes admit hosts only", who, HostIdentity("POD", "HOST"))
		n.log.Warn("refused connection: "+msg, "remote", cs.remote, "reason", "wrong-role", "identity", who)
		cs.sendError(0, wire.CodeAuthFailed, msg)
		cs.bw.Flush()
		return false
	}
	cs.who = who
	cs.send(wire.OpHello, 0, wire.EncodeHello(nil, &wire.Hello{Node: n.cfg.Name}))
	if err := cs.bw.Flush(); err != nil {
		return cs.lost(p, err)
	}
	cs.c.SetDeadline(time.Time{})
	n.log.Debug("admitted", "remote", cs.remote, "identity", who)
	return true
}

// admissionMode describes how the node admits clients.
func (n *Node) admissionMode() string {
	if n.cfg.TLS != nil {
		return "mutual TLS (hosts with a certificate of the cluster CA)"
	}
	return "pod secret (HMAC challenge/response)"
}
