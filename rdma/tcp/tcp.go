package tcp

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/wire"
)

// Transport is the tcp backend. Create it with New (pod secret) or NewTLS
// (mutual TLS).
type Transport struct {
	secret []byte
	pod    string
	tls    *tls.Config
	reg    rdma.Registry
	// DialTimeout bounds connect + admission when ctx has no deadline.
	DialTimeout time.Duration
	// LocalIP, if set, is the source address of connections (a host's own
	// address, e.g. 127.0.0.x for each host of a local cluster).
	LocalIP net.IP
}

// New returns a transport that authenticates as pod with the pod's secret.
func New(secret []byte, pod string) *Transport {
	return &Transport{secret: append([]byte(nil), secret...), pod: pod, DialTimeout: 5 * time.Second}
}

// NewTLS returns a transport that speaks to memory nodes over mutual TLS
// with cfg (memnode.ClientTLS builds it: this host's certificate, the
// cluster CA, the memory-node role check); ServerName is set per node to
// the host part of its address, which the node's certificate must cover.
func NewTLS(cfg *tls.Config) *Transport {
	return &Transport{tls: cfg, DialTimeout: 5 * time.Second}
}

// Name implements rdma.Transport.
func (t *Transport) Name() string { return "tcp" }

// Register implements rdma.Transport.
func (t *Transport) Register(buf []byte) (*rdma.Registration, error) { return t.reg.Register(buf) }

// Close implements rdma.Transport.
func (t *Transport) Close() error { return nil }

// Dial connects to node (host:port) and runs admission.
func (t *Transport) Dial(ctx context.Context, node rdma.NodeID) (rdma.Conn, error) {
	if _, ok := ctx.Deadline(); !ok && t.DialTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t.DialTimeout)
		defer cancel()
	}
	var d net.Dialer
	if t.LocalIP != nil {
		d.LocalAddr = &net.TCPAddr{IP: t.LocalIP}
	}
	nc, err := d.DialContext(ctx, "tcp", string(node))
	if err != nil {
		return nil, err // names the address: "dial tcp ADDR: connect: connection refused"
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if t.tls != nil {
		cfg := t.tls.Clone()
		if host, _, err := net.SplitHostPort(string(node)); err == nil {
			cfg.ServerName = host
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			var rh tls.RecordHeaderError
			if errors.As(err, &rh) {
				return nil, fmt.Errorf("it does not speak TLS (started without --tls-dir? it admits by the pod secret): %w", err)
			}
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		nc = tc
	}
	c := &conn{t: t, node: node, nc: nc, br: bufio.NewReaderSize(nc, 256<<10), bw: bufio.NewWriterSize(nc, 64<<10),
		pending: map[uint64]*pend{}, done: make(chan struct{})}
	if err := c.handshake(); err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	go c.readLoop()
	return c, nil
}

type pend struct {
	ops   []rdma.ReadOp // nil for synchronous requests
	total uint64
	reply chan reply
}

type reply struct {
	op   wire.Op
	body []byte
	err  error
}

type conn struct {
	t    *Transport
	node rdma.NodeID
	nc   net.Conn
	br   *bufio.Reader

	wmu     sync.Mutex
	bw      *bufio.Writer
	scratch []byte

	pmu     sync.Mutex
	nextID  uint64
	pending map[uint64]*pend
	failed  error

	cq rdma.CompletionQueue

	done      chan struct{}
	closeOnce sync.Once
}

func (c *conn) handshake() error {
	var hb [wire.HeaderSize]byte
	h, err := wire.ReadHeader(c.br, &hb)
	if err != nil {
		if c.t.tls != nil {
			// Under TLS 1.3 the node checks this host's certificate after
			// the client's side of the handshake: a refusal is an alert.
			return fmt.Errorf("the memory node refused this host's certificate (is it of the cluster CA, and a host's?): %w", err)
		}
		if errors.Is(err, wire.ErrBadMagic) && hb[0] == 0x15 {
			return fmt.Errorf("the memory node answered with a TLS alert: it admits hosts by mutual TLS; give this host its certificates (--memnode-tls-dir): %w", err)
		}
		return fmt.Errorf("reading hello (a memory node that requires mutual TLS waits for a TLS handshake instead: give this host its certificates, --memnode-tls-dir): %w", err)
	}
	body, err := c.readBody(h, 1024)
	if err != nil {
		return err
	}
	if h.Op == wire.OpError {
		return wire.DecodeError(body)
	}
	if h.Op != wire.OpHello {
		return fmt.Errorf("expected hello, got %s", h.Op)
	}
	hello, err := wire.DecodeHello(body)
	if err != nil {
		return err
	}
	if c.t.tls != nil {
		return nil // the TLS handshake authenticated both sides; hello says the node admitted us
	}
	a := &wire.Auth{Pod: c.t.pod}
	if _, err := rand.Read(a.ClientNonce[:]); err != nil {
		return err
	}
	a.MAC = wire.ClientMAC(c.t.secret, hello.Nonce, a.ClientNonce, c.t.pod)
	c.writeFrame(wire.OpAuth, 1, wire.EncodeAuth(nil, a))
	if err := c.bw.Flush(); err != nil {
		return err
	}
	h, err = wire.ReadHeader(c.br, &hb)
	if err != nil {
		return fmt.Errorf("reading admission answer: %w", err)
	}
	body, err = c.readBody(h, 4096)
	if err != nil {
		return err
	}
	if h.Op == wire.OpError {
		return wire.DecodeError(body)
	}
	want := wire.NodeMAC(c.t.secret, hello.Nonce, a.ClientNonce, c.t.pod)
	if h.Op != wire.OpAuthOK || !hmac.Equal(body, want[:]) {
		return errors.New("node failed to prove it holds the pod secret (impostor or wrong secret)")
	}
	return nil
}

func (c *conn) readBody(h wire.Header, max uint32) ([]byte, error) {
	if h.Len > max {
		return nil, fmt.Errorf("%s frame of %d bytes exceeds %d", h.Op, h.Len, max)
	}
	b := make([]byte, h.Len)
	_, err := io.ReadFull(c.br, b)
	return b, err
}

func (c *conn) writeFrame(op wire.Op, id uint64, body []byte) {
	var h [wire.HeaderSize]byte
	wire.PutHeader(h[:], wire.Header{Op: op, Len: uint32(len(body)), ID: id})
	c.bw.Write(h[:])
	c.bw.Write(body)
}

// Node implements rdma.Conn.
func (c *conn) Node() rdma.NodeID { return c.node }

func (c *conn) register(p *pend) (uint64, error) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if c.failed != nil {
		return 0, c.failed
	}
	c.nextID++
	c.pending[c.nextID] = p
	return c.nextID, nil
}

func (c *conn) unregister(id uint64) *pend {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	p := c.pending[id]
	delete(c.pending, id)
	return p
}

// PostReads implements rdma.Conn.
func (c *conn) PostReads(ops []rdma.ReadOp) error {
	if len(ops) == 0 {
		return nil
	}
	if len(ops) > wire.MaxBatch {
		return fmt.Errorf("batch of %d reads exceeds %d", len(ops), wire.MaxBatch)
	}
	p := &pend{ops: append([]rdma.ReadOp(nil), ops...)}
	seg := ops[0].Seg.ID
	for i, op := range ops {
		if op.Seg.ID != seg {
			return rdma.ErrMixedSegments
		}
		if len(op.Dst) == 0 || len(op.Dst) > wire.MaxReadLen {
			return fmt.Errorf("read %d of %d bytes (allowed 1..%d)", i, len(op.Dst), wire.MaxReadLen)
		}
		if err := c.t.reg.Check(op.Dst); err != nil {
			return err
		}
		p.total += uint64(len(op.Dst))
	}
	id, err := c.register(p)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	body := c.scratch[:0]
	body = binary.LittleEndian.AppendUint64(body, uint64(seg))
	body = binary.LittleEndian.AppendUint32(body, uint32(len(ops)))
	body = binary.LittleEndian.AppendUint32(body, 0)
	for _, op := range ops {
		body = binary.LittleEndian.AppendUint64(body, op.Off)
		body = binary.LittleEndian.AppendUint32(body, uint32(len(op.Dst)))
		body = binary.LittleEndian.AppendUint32(body, 0)
	}
	c.scratch = body
	c.writeFrame(wire.OpRead, id, body)
	err = c.bw.Flush()
	c.wmu.Unlock()
	if err != nil {
		c.unregister(id)
		c.fail(fmt.Errorf("memory node %s: sending: %w", c.node, err))
		return err
	}
	return nil
}

// call runs one synchronous request.
func (c *conn) call(ctx context.Context, op wire.Op, prefix []byte, data []byte) (reply, error) {
	p := &pend{reply: make(chan reply, 1)}
	id, err := c.register(p)
	if err != nil {
		return reply{}, err
	}
	c.wmu.Lock()
	var h [wire.HeaderSize]byte
	wire.PutHeader(h[:], wire.Header{Op: op, Len: uint32(len(prefix) + len(data)), ID: id})
	c.bw.Write(h[:])
	c.bw.Write(prefix)
	c.bw.Write(data)
	err = c.bw.Flush()
	c.wmu.Unlock()
	if err != nil {
		c.unregister(id)
		c.fail(fmt.Errorf("memory node %s: sending: %w", c.node, err))
		return reply{}, err
	}
	select {
	case r := <-p.reply:
		if r.err != nil {
			return r, r.err
		}
		return r, nil
	case <-ctx.Done():
		c.unregister(id)
		return reply{}, ctx.Err()
	}
}

// Write implements rdma.Conn.
func (c *conn) Write(ctx context.Context, w *rdma.WriteSegment) (rdma.SegmentRef, error) {
	if w.PageSize <= 0 || len(w.Data)%w.PageSize != 0 || len(w.Data)/w.PageSize != len(w.Digests) {
		return rdma.SegmentRef{}, fmt.Errorf("segment of %d bytes, page size %d, %d digests is inconsistent", len(w.Data), w.PageSize, len(w.Digests))
	}
	p := &wire.Put{Segment: uint64(w.ID), PageSize: uint32(w.PageSize), Digests: w.Digests}
	r, err := c.call(ctx, wire.OpPut, wire.EncodePutPrefix(nil, p), w.Data)
	if err != nil {
		return rdma.SegmentRef{}, err
	}
	ok, err := wire.DecodePutOK(r.body)
	if err != nil {
		return rdma.SegmentRef{}, err
	}
	return rdma.SegmentRef{ID: w.ID, Len: uint64(len(w.Data)), Addr: ok.Addr, RKey: ok.RKey}, nil
}

// Delete implements rdma.Conn.
func (c *conn) Delete(ctx context.Context, id rdma.SegmentID) error {
	_, err := c.call(ctx, wire.OpDelete, wire.EncodeU64(nil, uint64(id)), nil)
	return err
}

// Stat asks the node for a segment's page size and digests.
func (c *conn) Stat(ctx context.Context, id rdma.SegmentID) (*wire.StatResp, error) {
	r, err := c.call(ctx, wire.OpStat, wire.EncodeU64(nil, uint64(id)), nil)
	if err != nil {
		return nil, err
	}
	return wire.DecodeStatResp(r.body)
}

// ListFrom implements rdma.Inventory.
func (c *conn) ListFrom(ctx context.Context, from rdma.SegmentID, max int) (rdma.ListPage, error) {
	if max < 0 || max > wire.MaxListPage {
		max = wire.MaxListPage
	}
	r, err := c.call(ctx, wire.OpList, wire.EncodeListReq(nil, &wire.ListReq{From: uint64(from), Max: uint32(max)}), nil)
	if err != nil {
		return rdma.ListPage{}, err
	}
	lr, err := wire.DecodeListResp(r.body)
	if err != nil {
		return rdma.ListPage{}, err
	}
	p := rdma.ListPage{More: lr.More, Next: rdma.SegmentID(lr.Next)}
	for _, e := range lr.Entries {
		p.Segments = append(p.Segments, rdma.StoredSegment{ID: rdma.SegmentID(e.ID), Len: e.Len, PageSize: int(e.PageSize), Writer: e.Writer,
			Stored: time.Unix(0, e.PutNanos), Referenced: e.Flags&wire.EntryReferenced != 0, ReferencedHere: e.Flags&wire.EntryReferencedHere != 0})
	}
	return p, nil
}

// Usage implements rdma.Inventory.
func (c *conn) Usage(ctx context.Context) (rdma.NodeUsage, error) {
	r, err := c.call(ctx, wire.OpUsage, nil, nil)
	if err != nil {
		return rdma.NodeUsage{}, err
	}
	u, err := wire.DecodeUsageResp(r.body)
	if err != nil {
		return rdma.NodeUsage{}, err
	}
	return rdma.NodeUsage{Capacity: u.Capacity, Used: u.Used, Segments: u.Segments,
		Authorizing: u.Flags&wire.UsageAuthorizing != 0, CatalogIncomplete: u.Flags&wire.UsageCatalogIncomplete != 0}, nil
}

// ExchangeQP sends a verbs client's queue-pair info over this admitted
// control connection and returns the node's (rdma/verbs uses it to connect
// an RC queue pair). A node without RDMA answers CodeUnsupported.
func (c *conn) ExchangeQP(ctx context.Context, local wire.QPInfo) (wire.QPInfo, error) {
	r, err := c.call(ctx, wire.OpQPConnect, wire.EncodeQPInfo(nil, &local), nil)
	if err != nil {
		return wire.QPInfo{}, err
	}
	q, err := wire.DecodeQPInfo(r.body)
	if err != nil {
		return wire.QPInfo{}, err
	}
	return *q, nil
}

// Poll implements rdma.Conn.
func (c *conn) Poll(ctx context.Context, out []rdma.Completion) (int, error) {
	return c.cq.Poll(ctx, out)
}

func (c *conn) complete(ops []rdma.ReadOp, err error) { c.cq.CompleteOps(ops, err) }

// fail marks the connection dead: every outstanding request completes with
// err and later posts are refused.
func (c *conn) fail(err error) {
	c.pmu.Lock()
	if c.failed != nil {
		c.pmu.Unlock()
		return
	}
	c.failed = err
	ps := c.pending
	c.pending = map[uint64]*pend{}
	c.pmu.Unlock()
	c.nc.Close()
	for _, p := range ps {
		if p.reply != nil {
			p.reply <- reply{err: err}
		} else {
			c.complete(p.ops, err)
		}
	}
	c.cq.Fail(err)
}

func (c *conn) readLoop() {
	defer close(c.done)
	var hb [wire.HeaderSize]byte
	var n8 [8]byte
	for {
		h, err := wire.ReadHeader(c.br, &hb)
		if err != nil {
			c.fail(fmt.Errorf("memory node %s: connection lost: %w", c.node, err))
			return
		}
		switch h.Op {
		case wire.OpReadResp:
			p := c.unregister(h.ID)
			if p == nil || p.ops == nil {
				// A read whose request was abandoned cannot exist (reads are
				// only abandoned by Close), so this is a protocol violation.
				c.fail(fmt.Errorf("memory node %s: response for unknown request %d", c.node, h.ID))
				return
			}
			if uint64(h.Len) != 8+p.total {
				c.complete(p.ops, fmt.Errorf("memory node %s: response of %d bytes for %d requested", c.node, h.Len, p.total))
				c.fail(fmt.Errorf("memory node %s: protocol desynchronised", c.node))
				return
			}
			if _, err := io.ReadFull(c.br, n8[:]); err != nil {
				c.complete(p.ops, err)
				c.fail(err)
				return
			}
			for _, op := range p.ops {
				if _, err := io.ReadFull(c.br, op.Dst); err != nil {
					err = fmt.Errorf("memory node %s: connection lost mid-response: %w", c.node, err)
					c.complete(p.ops, err)
					c.fail(err)
					return
				}
			}
			c.complete(p.ops, nil)
		case wire.OpError, wire.OpPutOK, wire.OpDeleteOK, wire.OpStatResp, wire.OpQPConnOK, wire.OpListResp, wire.OpUsageResp:
			body, err := c.readBody(h, 64<<20)
			if err != nil {
				c.fail(fmt.Errorf("memory node %s: %w", c.node, err))
				return
			}
			var rerr error
			if h.Op == wire.OpError {
				rerr = fmt.Errorf("memory node %s: %w", c.node, wire.DecodeError(body))
			}
			if h.ID == 0 && h.Op == wire.OpError {
				c.fail(rerr)
				return
			}
			p := c.unregister(h.ID)
			switch {
			case p == nil:
				// a synchronous call that gave up (ctx); drop the answer
			case p.reply != nil:
				p.reply <- reply{op: h.Op, body: body, err: rerr}
			case rerr != nil:
				c.complete(p.ops, rerr)
			default:
				c.fail(fmt.Errorf("memory node %s: %s answers a read", c.node, h.Op))
				return
			}
		default:
			c.fail(fmt.Errorf("memory node %s: unexpected %s frame", c.node, h.Op))
			return
		}
	}
}

// Close implements rdma.Conn.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.fail(rdma.ErrClosed)
		<-c.done
	})
	return nil
}
