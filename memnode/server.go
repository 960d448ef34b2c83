package memnode

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
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/pki"
	"github.com/aquifer-pool/aquifer/rdma/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config configures a memory node. Listen, Capacity and either Secret or
// TLS are required.
type Config struct {
	Listen        string // control/data address, e.g. 127.0.0.1:7400
	MetricsListen string // Prometheus /metrics address; "" disables
	Capacity      uint64 // bytes of slab memory at most
	SlabSize      uint64 // bytes per slab mapping (default 1 GiB, capped at Capacity)
	MaxSegment    uint64 // largest accepted segment (default 64 MiB)
	DataDir       string // persisted segments; "" keeps them in memory only
	Secret        []byte // the pod's shared admission secret (without TLS)
	Name          string // node name sent in Hello (default: the listen address)
	// TLS, when set, admits clients by mutual TLS instead of the pod
	// secret: only hosts with a certificate of the cluster CA (ServerTLS
	// builds it from a TLS directory); every frame then travels inside the
	// TLS session. Identity is the certificate's common name.
	TLS *tls.Config
	// Catalog, when set, authorizes reads and deletes by the cluster
	// catalog (authz.go); Grace is how long after a put any client may
	// read a segment (default DefaultGrace).
	Catalog Catalog
	Grace   time.Duration
	Logger  *slog.Logger
	// MaxUnauthenticated caps connections that have not passed admission
	// yet (default 256); when a new one would exceed it, the oldest is
	// closed. AuthTimeout bounds each connection's admission (default 5s).
	// Together they bound what unauthenticated clients can hold (see
	// admission.go).
	MaxUnauthenticated int
	AuthTimeout        time.Duration

	// RDMA, when set, exposes the slabs for one-sided reads and connects
	// clients' queue pairs (package rdma/verbs provides one). Without it the
	// node serves reads over its stream protocol only.
	RDMA RDMAEndpoint

	// FaultCorruptReads flips one byte of every page this node returns
	// (its stored copy stays intact). Test-only: it exists so replication
	// tests can prove that clients detect and bypass a lying node.
	FaultCorruptReads bool
}

// RDMAEndpoint is the node side of the verbs backend: memory registration
// with remote read access, and passive set-up of one RC queue pair per
// client from the client's QPInfo.
type RDMAEndpoint interface {
	Expose(buf []byte) (rkey uint32, err error)
	// Accept connects a passive queue pair to the client's; release
	// destroys it and is called when the client's control connection ends.
	Accept(remote wire.QPInfo) (local wire.QPInfo, release func() error, err error)
}

// Node is a running memory node.
type Node struct {
	cfg   Config
	log   *slog.Logger
	store *Store
	reg   *prometheus.Registry
	m     metrics

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup

	pending pendingConns
	authz   authz
}

type metrics struct {
	readOps, readBytes, readBatches prometheus.Counter
	writes, writeBytes              prometheus.Counter
	errors                          *prometheus.CounterVec
	authFail                        *prometheus.CounterVec
	admitted                        prometheus.Counter
	batchSeconds                    prometheus.Histogram
	conns                           prometheus.Gauge
	unauthenticated                 prometheus.Gauge
}

// New opens the store (loading DataDir) and prepares metrics.
func New(cfg Config) (*Node, error) {
	if cfg.TLS == nil && len(cfg.Secret) < 16 {
		return nil, fmt.Errorf("the pod secret must be at least 16 bytes (got %d); generate one with `head -c 32 /dev/urandom | base64`", len(cfg.Secret))
	}
	if cfg.MaxSegment == 0 {
		cfg.MaxSegment = 64 << 20
	}
	if cfg.SlabSize == 0 {
		cfg.SlabSize = 1 << 30
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Name == "" {
		cfg.Name = cfg.Listen
	}
	if cfg.Grace < 0 {
		return nil, fmt.Errorf("--put-grace %v must not be negative", cfg.Grace)
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.TLS != nil && cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, fmt.Errorf("the TLS configuration must require and verify client certificates (use memnode.ServerTLS)")
	}
	if err := admissionDefaults(&cfg); err != nil {
		return nil, err
	}
	st, err := OpenStore(cfg.Capacity, cfg.SlabSize, cfg.DataDir, cfg.Logger)
	if err != nil {
		return nil, err
	}
	if cfg.RDMA != nil {
		if err := st.Expose(cfg.RDMA.Expose); err != nil {
			st.Close()
			return nil, err
		}
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.Name), store: st, reg: prometheus.NewRegistry(), conns: map[net.Conn]struct{}{}}
	n.initMetrics()
	n.initAuthz()
	if cfg.FaultCorruptReads {
		n.log.Warn("FAULT INJECTION: this node corrupts every page it returns (test only)")
	}
	return n, nil
}

func (n *Node) initMetrics() {
	f := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "aquifer", Subsystem: "memnode", Name: name, Help: help})
		n.reg.MustRegister(c)
		return c
	}
	n.m.readOps = f("read_ops_total", "Page reads served.")
	n.m.readBytes = f("read_bytes_total", "Bytes served by reads.")
	n.m.readBatches = f("read_batches_total", "Read batches (requests) served.")
	n.m.writes = f("segment_writes_total", "Segments published (new, not idempotent repeats).")
	n.m.writeBytes = f("segment_write_bytes_total", "Bytes of newly published segments.")
	n.m.admitted = f("connections_admitted_total", "Connections that passed pod admission.")
	n.m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "aquifer", Subsystem: "memnode", Name: "request_errors_total", Help: "Requests refused, by error code."}, []string{"code"})
	n.m.authFail = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "aquifer", Subsystem: "memnode", Name: "auth_failures_total", Help: "Connections refused admission, by reason."}, []string{"reason"})
	n.m.batchSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "aquifer", Subsystem: "memnode", Name: "read_batch_seconds", Help: "Time to serve one read batch (node side).", Buckets: prometheus.ExponentialBuckets(1e-6, 2, 20)})
	n.m.conns = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "aquifer", Subsystem: "memnode", Name: "connections", Help: "Open admitted connections."})
	n.m.unauthenticated = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "aquifer", Subsystem: "memnode", Name: "unauthenticated_connections", Help: "Open connections that have not passed admission yet (at most --max-unauthenticated)."})
	n.reg.MustRegister(n.m.errors, n.m.authFail, n.m.batchSeconds, n.m.conns, n.m.unauthenticated,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "aquifer", Subsystem: "memnode", Name: "capacity_bytes", Help: "Configured capacity."}, func() float64 { return float64(n.store.Capacity()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "aquifer", Subsystem: "memnode", Name: "used_bytes", Help: "Bytes held by segments."}, func() float64 { return float64(n.store.Used()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "aquifer", Subsystem: "memnode", Name: "segments", Help: "Segments held."}, func() float64 { return float64(n.store.Segments()) }),
	)
}

// Registry exposes the node's metrics (for tests and embedding).
func (n *Node) Registry() *prometheus.Registry { return n.reg }

// Store exposes the node's store (for in-process transports such as emu).
func (n *Node) Store() *Store { return n.store }

// Close stops connections and releases the slabs.
func (n *Node) Close() error {
	n.mu.Lock()
	for c := range n.conns {
		c.Close()
	}
	n.mu.Unlock()
	n.wg.Wait()
	return n.store.Close()
}

// Serve accepts connections on l until it is closed.
func (n *Node) Serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		n.mu.Lock()
		n.conns[c] = struct{}{}
		n.wg.Add(1)
		n.mu.Unlock()
		go func() {
			defer n.wg.Done()
			n.serveConn(c)
			n.mu.Lock()
			delete(n.conns, c)
			n.mu.Unlock()
		}()
	}
}

// Run is what `aquifer memnode` runs: it opens the node, listens on
// cfg.Listen (and cfg.MetricsListen), calls ready with the bound address,
// and serves until ctx ends.
func Run(ctx context.Context, cfg Config, ready func(addr, metricsAddr string)) error {
	return RunNode(ctx, cfg, func(_ *Node, addr, metricsAddr string) error {
		if ready != nil {
			ready(addr, metricsAddr)
		}
		return nil
	})
}

// RunNode is Run with the node handed to ready, which may refuse to go on
// (its error ends RunNode before anything is served).
func RunNode(ctx context.Context, cfg Config, ready func(n *Node, addr, metricsAddr string) error) error {
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	if cfg.Name == "" {
		cfg.Name = l.Addr().String()
	}
	n, err := New(cfg)
	if err != nil {
		l.Close()
		return err
	}
	defer n.Close()
	var maddr string
	if cfg.MetricsListen != "" {
		ml, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			l.Close()
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		maddr = ml.Addr().String()
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ml)
		defer srv.Close()
	}
	n.log.Info("memory node serving", "listen", l.Addr().String(), "metrics", maddr, "capacity", cfg.Capacity, "data_dir", cfg.DataDir, "segments", n.store.Segments(),
		"admission", n.admissionMode())
	if cfg.Catalog == nil {
		n.log.Warn("no control plane configured (--etcd-endpoints): every admitted client may read and delete every segment on this node")
	} else {
		n.log.Info("authorizing reads and deletes by the cluster catalog", "put_grace", n.cfg.Grace)
	}
	if ready != nil {
		if err := ready(n, l.Addr().String(), maddr); err != nil {
			l.Close()
			return err
		}
	}
	go func() { <-ctx.Done(); l.Close() }()
	err = n.Serve(l)
	n.log.Info("memory node stopping")
	return err
}

// ---- one connection ----------------------------------------------------------

type connState struct {
	n    *Node
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	hdr  [wire.HeaderSize]byte
	out  []byte
	body []byte
	rd   wire.Read
	pod  string
	// who is the admitted identity: the certificate's CN under TLS,
	// "pod NAME" under the pod secret (claimed by any holder of it).
	who         string
	received    time.Time // when the request being handled arrived
	refusedOnce bool
	remote      string
	fault       []byte
	// releases destroy the queue pairs this connection set up
	releases []func() error
}

func (n *Node) serveConn(c net.Conn) {
	defer c.Close()
	// Small buffers until the client is admitted: an unauthenticated
	// connection must cost little.
	remote := c.RemoteAddr().String()
	if n.cfg.TLS != nil {
		c = tls.Server(c, n.cfg.TLS)
		defer c.Close()
	}
	cs := &connState{n: n, c: c, br: bufio.NewReaderSize(c, 512), bw: bufio.NewWriterSize(c, 512), remote: remote}
	p := n.pending.add(n, c)
	var ok bool
	if n.cfg.TLS != nil {
		ok = cs.admitTLS(p)
	} else {
		ok = cs.admit(p)
	}
	n.pending.remove(n, p)
	if !ok {
		return
	}
	cs.grow()
	defer func() {
		for _, r := range cs.releases {
			r()
		}
	}()
	n.m.admitted.Inc()
	n.m.conns.Inc()
	defer n.m.conns.Dec()
	for {
		h, err := wire.ReadHeader(cs.br, &cs.hdr)
		cs.received = time.Now()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				n.log.Warn("closing connection: unreadable frame", "remote", cs.remote, "pod", cs.pod, "err", err)
				cs.sendError(0, wire.CodeMalformed, err.Error())
				cs.bw.Flush()
			}
			return
		}
		max, err := wire.MaxRequestBody(h.Op, n.cfg.MaxSegment)
		if err != nil || h.Op == wire.OpAuth {
			cs.refuse(h.ID, wire.CodeMalformed, fmt.Sprintf("%s is not a request a client may send now", h.Op))
			if h.Len > wire.MaxControlBody {
				cs.bw.Flush()
				return // cannot resynchronise cheaply
			}
			if _, err := cs.br.Discard(int(h.Len)); err != nil {
				return
			}
			if cs.br.Buffered() == 0 && cs.bw.Flush() != nil {
				return
			}
			continue
		}
		if uint64(h.Len) > max {
			n.log.Warn("closing connection: oversized frame", "remote", cs.remote, "pod", cs.pod, "op", h.Op, "len", h.Len, "max", max)
			cs.refuse(h.ID, wire.CodeTooLarge, fmt.Sprintf("%s body of %d bytes exceeds the limit of %d", h.Op, h.Len, max))
			cs.bw.Flush()
			return
		}
		if cap(cs.body) < int(h.Len) {
			cs.body = make([]byte, h.Len)
		}
		body := cs.body[:h.Len]
		if _, err := io.ReadFull(cs.br, body); err != nil {
			return
		}
		cs.handle(h, body)
		if h.Op == wire.OpPut && cap(cs.body) > 1<<20 {
			cs.body = nil // do not pin a segment-sized buffer per idle connection
		}
		if cs.br.Buffered() == 0 {
			if err := cs.bw.Flush(); err != nil {
				return
			}
		}
	}
}

// admit runs the challenge/response within the admission deadline. It
// logs and counts every refusal.
func (cs *connState) admit(p *pendingConn) bool {
	n := cs.n
	var hello wire.Hello
	if _, err := rand.Read(hello.Nonce[:]); err != nil {
		n.log.Error("no randomness for the admission nonce", "err", err)
		return false
	}
	hello.Node = n.cfg.Name
	cs.c.SetDeadline(time.Now().Add(n.cfg.AuthTimeout))
	cs.send(wire.OpHello, 0, wire.EncodeHello(nil, &hello))
	if err := cs.bw.Flush(); err != nil {
		return cs.lost(p, err)
	}
	fail := func(reason string, code wire.Code, msg string, attrs ...any) bool {
		n.m.authFail.WithLabelValues(reason).Inc()
		n.log.Warn("refused connection: "+msg, append([]any{"remote", cs.remote, "reason", reason}, attrs...)...)
		cs.sendError(0, code, msg)
		cs.bw.Flush()
		return false
	}
	h, err := wire.ReadHeader(cs.br, &cs.hdr)
	if err != nil {
		if p.gone() || isTimeout(err) || isClosed(err) {
			return cs.lost(p, err)
		}
		if errors.Is(err, wire.ErrBadMagic) && cs.hdr[0] == 0x16 && cs.hdr[1] == 0x03 {
			return fail("bad-frame", wire.CodeUnauthenticated, "the client started a TLS handshake, but this node admits by the pod secret (it was started without --tls-dir): give the node its certificates, or the client the pod secret")
		}
		return fail("bad-frame", wire.CodeUnauthenticated, "expected an auth frame: "+err.Error())
	}
	if h.Op != wire.OpAuth {
		return fail("missing-credential", wire.CodeUnauthenticated, fmt.Sprintf("%s before authentication; send auth with the pod's shared secret first", h.Op))
	}
	max, _ := wire.MaxRequestBody(wire.OpAuth, 0)
	if uint64(h.Len) > max {
		return fail("bad-frame", wire.CodeMalformed, "auth frame too large")
	}
	body := make([]byte, h.Len)
	if _, err := io.ReadFull(cs.br, body); err != nil {
		if p.gone() || isTimeout(err) {
			return cs.lost(p, err)
		}
		return fail("bad-frame", wire.CodeMalformed, "truncated auth frame")
	}
	a, err := wire.DecodeAuth(body)
	if err != nil {
		return fail("bad-frame", wire.CodeMalformed, err.Error())
	}
	want := wire.ClientMAC(n.cfg.Secret, hello.Nonce, a.ClientNonce, a.Pod)
	if !hmac.Equal(want[:], a.MAC[:]) {
		return fail("wrong-credential", wire.CodeAuthFailed, "wrong pod credential (HMAC mismatch): this client does not hold the pod's shared secret", "pod", a.Pod)
	}
	cs.pod = a.Pod
	cs.who = "pod " + a.Pod
	proof := wire.NodeMAC(n.cfg.Secret, hello.Nonce, a.ClientNonce, a.Pod)
	cs.send(wire.OpAuthOK, h.ID, proof[:])
	if err := cs.bw.Flush(); err != nil {
		return false
	}
	cs.c.SetDeadline(time.Time{})
	n.log.Debug("admitted", "remote", cs.remote, "pod", a.Pod)
	return true
}

func (cs *connState) send(op wire.Op, id uint64, body []byte) {
	var h [wire.HeaderSize]byte
	wire.PutHeader(h[:], wire.Header{Op: op, Len: uint32(len(body)), ID: id})
	cs.bw.Write(h[:])
	cs.bw.Write(body)
}

func (cs *connState) sendError(id uint64, c wire.Code, msg string) {
	cs.out = wire.EncodeError(cs.out[:0], c, msg)
	cs.send(wire.OpError, id, cs.out)
}

// refuse answers a request with an error, counts it and logs at debug (a
// flood of bad requests must not flood the log; auth failures log at warn).
func (cs *connState) refuse(id uint64, c wire.Code, msg string) {
	cs.n.m.errors.WithLabelValues(strconv.Itoa(int(c))).Inc()
	cs.n.log.Debug("refused request", "remote", cs.remote, "pod", cs.pod, "code", c.String(), "msg", msg)
	cs.sendError(id, c, msg)
}

func codeOf(err error) wire.Code {
	switch {
	case errors.Is(err, ErrNotFound):
		return wire.CodeNotFound
	case errors.Is(err, ErrExists):
		return wire.CodeExists
	case errors.Is(err, ErrNoSpace):
		return wire.CodeNoSpace
	case errors.Is(err, ErrOutOfBounds):
		return wire.CodeOutOfBounds
	case errors.Is(err, ErrBadDigest):
		return wire.CodeMalformed
	}
	return wire.CodeInternal
}

func (cs *connState) handle(h wire.Header, body []byte) {
	n := cs.n
	v, err := wire.DecodeRequest(h.Op, body, n.cfg.MaxSegment, &cs.rd)
	if err != nil {
		cs.refuse(h.ID, wire.CodeMalformed, err.Error())
		return
	}
	switch h.Op {
	case wire.OpRead:
		cs.read(h.ID, v.(*wire.Read))
	case wire.OpPut:
		p := v.(*wire.Put)
		_, existed, err := n.store.PutAs(p, cs.who)
		if err != nil {
			if codeOf(err) == wire.CodeInternal {
				n.log.Error("put failed", "segment", p.Segment, "err", err)
			}
			cs.refuse(h.ID, codeOf(err), err.Error())
			return
		}
		if !existed {
			n.m.writes.Inc()
			n.m.writeBytes.Add(float64(len(p.Data)))
		}
		ok := &wire.PutOK{Existed: existed}
		ok.Addr, ok.RKey, _ = n.store.Locate(p.Segment)
		cs.out = wire.EncodePutOK(cs.out[:0], ok)
		cs.send(wire.OpPutOK, h.ID, cs.out)
	case wire.OpQPConnect:
		if n.cfg.RDMA == nil {
			cs.refuse(h.ID, wire.CodeUnsupported, "this memory node has no RDMA endpoint (started without --rdma); use the tcp transport")
			return
		}
		local, release, err := n.cfg.RDMA.Accept(*v.(*wire.QPInfo))
		if err == nil {
			cs.releases = append(cs.releases, release)
		}
		if err != nil {
			n.log.Error("queue-pair set-up failed", "remote", cs.remote, "pod", cs.pod, "err", err)
			cs.refuse(h.ID, wire.CodeInternal, "queue-pair set-up failed: "+err.Error())
			return
		}
		cs.out = wire.EncodeQPInfo(cs.out[:0], &local)
		cs.send(wire.OpQPConnOK, h.ID, cs.out)
	case wire.OpDelete:
		id := v.(uint64)
		m, err := n.store.Meta(id)
		if err != nil {
			cs.refuse(h.ID, codeOf(err), err.Error())
			return
		}
		if !cs.allow(h.ID, "delete", m) {
			return
		}
		if err := n.store.Delete(id); err != nil {
			cs.refuse(h.ID, codeOf(err), err.Error())
			return
		}
		cs.send(wire.OpDeleteOK, h.ID, nil)
	case wire.OpStat:
		// The digests fingerprint the pages: stat is authorized as a read.
		m, err := n.store.Meta(v.(uint64))
		if err != nil {
			cs.refuse(h.ID, codeOf(err), err.Error())
			return
		}
		if !cs.allow(h.ID, "read", m) {
			return
		}
		ps, d, err := n.store.Stat(v.(uint64))
		if err != nil {
			cs.refuse(h.ID, codeOf(err), err.Error())
			return
		}
		cs.out = wire.EncodeStatResp(cs.out[:0], &wire.StatResp{PageSize: ps, Digests: d})
		cs.send(wire.OpStatResp, h.ID, cs.out)
	case wire.OpList:
		r := v.(*wire.ListReq)
		max := int(r.Max)
		if max == 0 || max > wire.MaxListPage {
			max = wire.MaxListPage
		}
		ms, more, next := n.store.List(r.From, max)
		resp := &wire.ListResp{More: more, Next: next, Entries: make([]wire.ListEntry, 0, len(ms))}
		for _, m := range ms {
			resp.Entries = append(resp.Entries, wire.ListEntry{ID: m.ID, Len: m.Len, PutNanos: m.PutAt.UnixNano(), PageSize: m.PageSize,
				Flags: n.referenced(m.ID), Writer: m.Writer})
		}
		cs.out = wire.EncodeListResp(cs.out[:0], resp)
		cs.send(wire.OpListResp, h.ID, cs.out)
	case wire.OpUsage:
		u := &wire.UsageResp{Capacity: n.store.Capacity(), Used: n.store.Used(), Segments: uint64(n.store.Segments()), Flags: n.usageFlags()}
		cs.out = wire.EncodeUsageResp(cs.out[:0], u)
		cs.send(wire.OpUsageResp, h.ID, cs.out)
	}
}

func (cs *connState) read(id uint64, rd *wire.Read) {
	n := cs.n
	start := time.Now()
	g := n.store.acquire(rd.Segment)
	if g == nil {
		cs.refuse(id, wire.CodeNotFound, fmt.Sprintf("segment %#x is not stored on this node", rd.Segment))
		return
	}
	defer n.store.release(g)
	if !cs.allow(id, "read", g.meta()) {
		return
	}
	size := uint64(len(g.data))
	var total uint64
	for i, op := range rd.Ops {
		if op.Off > size || uint64(op.Len) > size-op.Off {
			cs.refuse(id, wire.CodeOutOfBounds, fmt.Sprintf("read op %d [%d,+%d) outside segment %#x of %d bytes", i, op.Off, op.Len, rd.Segment, size))
			return
		}
		total += uint64(op.Len)
	}
	var h [wire.HeaderSize + 8]byte
	wire.PutHeader(h[:], wire.Header{Op: wire.OpReadResp, Len: uint32(8 + total), ID: id})
	binary.LittleEndian.PutUint32(h[wire.HeaderSize:], uint32(len(rd.Ops)))
	cs.bw.Write(h[:])
	for _, op := range rd.Ops {
		src := g.data[op.Off : op.Off+uint64(op.Len)]
		if n.cfg.FaultCorruptReads {
			cs.fault = append(cs.fault[:0], src...)
			for i := 0; i < len(cs.fault); i += int(g.pageSize) {
				cs.fault[i] ^= 0x5a
			}
			src = cs.fault
		}
		cs.bw.Write(src)
	}
	n.m.readOps.Add(float64(len(rd.Ops)))
	n.m.readBytes.Add(float64(total))
	n.m.readBatches.Inc()
	n.m.batchSeconds.Observe(time.Since(start).Seconds())
}

// ParseSecret accepts a secret file's content: surrounding whitespace is
// trimmed; the bytes themselves are the secret. A file other users could
// read is refused with the chmod that fixes it.
func ParseSecret(path string) ([]byte, error) {
	if err := pki.CheckPrivate(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("reading the pod secret: %w", err)
		}
		return nil, fmt.Errorf("pod secret: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the pod secret: %w", err)
	}
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b, nil
}

// Name is the node's name (as sent in Hello).
func (n *Node) Name() string { return n.cfg.Name }
