package tcp_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/pki"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/tcp"
	"github.com/aquifer-pool/aquifer/rdma/wire"
)

// certs is a cluster CA with the certificates the tests present: a memory
// node's, two hosts', and impostors.
type certs struct {
	ca, node, host1, host2 string
	// foreign: a host certificate of another CA; daemon: a certificate of
	// the cluster CA that is not a host's (the shared etcd client's);
	// member: one that is not a memory node's (an etcd member's).
	foreign, daemon, member string
}

func newCerts(t testing.TB) *certs {
	t.Helper()
	root := t.TempDir()
	c := &certs{ca: filepath.Join(root, "ca"), node: filepath.Join(root, "node"), host1: filepath.Join(root, "h1"), host2: filepath.Join(root, "h2"),
		foreign: filepath.Join(root, "foreign"), daemon: filepath.Join(root, "daemon"), member: filepath.Join(root, "member")}
	ca, err := pki.OpenCA(c.ca, "test cluster CA")
	if err != nil {
		t.Fatal(err)
	}
	must := func(_ pki.Pair, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(memnode.IssueNodeCert(c.ca, c.node, "memnode1", []string{"127.0.0.1"}))
	must(memnode.IssueHostCert(c.ca, c.host1, "pod1", "host1"))
	must(memnode.IssueHostCert(c.ca, c.host2, "pod2", "host2"))
	other := filepath.Join(root, "other-ca")
	if _, err := pki.OpenCA(other, "another CA"); err != nil {
		t.Fatal(err)
	}
	must(memnode.IssueHostCert(other, c.foreign, "pod1", "host1"))
	must(ca.Ensure(c.daemon, "host", pki.Spec{CN: "aquifer daemon", Client: true}))
	must(ca.Ensure(c.member, "member", pki.Spec{CN: "aquifer etcd member x", Server: true, Client: true, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}))
	return c
}

func (c *certs) host(t *testing.T, dir string) *tcp.Transport {
	t.Helper()
	cfg, id, err := memnode.ClientTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id, "host pod") {
		t.Fatalf("identity %q", id)
	}
	return tcp.NewTLS(cfg)
}

// mixed presents the certificate in dir/name but trusts the cluster CA.
func (c *certs) mixed(t *testing.T, dir, name string) *tcp.Transport {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return tcp.NewTLS(&tls.Config{RootCAs: c.pool(t), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
}

func (c *certs) pool(t *testing.T) *x509.CertPool {
	b, err := os.ReadFile(filepath.Join(c.ca, pki.CACert))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprintf(nc, "GET /metrics HTTP/1.0\r\n\r\n")
	b, _ := io.ReadAll(nc)
	return string(b)
}

func writeRead(t *testing.T, ctx context.Context, tr rdma.Transport, node string, id rdma.SegmentID, seed uint64) {
	t.Helper()
	c, err := tr.Dial(ctx, rdma.NodeID(node))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := randData(seed, 4*pageSize)
	ref, err := c.Write(ctx, &rdma.WriteSegment{ID: id, PageSize: pageSize, Data: data, Digests: rdma.PageDigests(data, pageSize)})
	if err != nil {
		t.Fatal(err)
	}
	dst := registered(t, tr, 4*pageSize)
	if err := c.PostReads([]rdma.ReadOp{{Seg: ref, Dst: dst, Cookie: 1}}); err != nil {
		t.Fatal(err)
	}
	if cs, err := rdma.PollAll(ctx, c, 1); err != nil || cs[0].Err != nil || !bytes.Equal(dst, data) {
		t.Fatalf("read back over TLS: %v %+v", err, cs)
	}
}

// TestMutualTLS runs a memory node process that admits by mutual TLS: a
// host with its certificate of the cluster CA publishes and reads back;
// no certificate, a certificate of another CA (or trusting another CA:
// three TLS refusals), a certificate of the
// cluster CA that is not a host's, and the pod secret are all refused,
// logged and counted, and the host keeps being served. A host refuses a
// server whose certificate is not a memory node's, and a node without TLS
// tells a TLS client plainly.
func TestMutualTLS(t *testing.T) {
	c := newCerts(t)
	p := startNode(t, t.TempDir(), "", "AQ_MEMNODE_TLS_DIR="+c.node)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h1 := c.host(t, c.host1)
	writeRead(t, ctx, h1, p.addr, 1, 1)

	dial := func(tr *tcp.Transport) error {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		cn, err := tr.Dial(dctx, rdma.NodeID(p.addr))
		if err == nil {
			cn.Close()
		}
		return err
	}
	for _, tc := range []struct {
		name string
		tr   *tcp.Transport
		want string
	}{
		{"no certificate", tcp.NewTLS(&tls.Config{RootCAs: c.pool(t), MinVersion: tls.VersionTLS13}), "certificate"},
		{"another CA", c.mixed(t, c.foreign, "host"), "certificate"},
		{"not a host", c.mixed(t, c.daemon, "host"), "not a host's"},
	} {
		err := dial(tc.tr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: admitted or unclear: %v", tc.name, err)
		}
		t.Logf("%s: %v", tc.name, err)
		writeRead(t, ctx, h1, p.addr, rdma.SegmentID(10+len(tc.name)), 2)
	}
	var re *wire.RemoteError
	if err := dial(c.mixed(t, c.daemon, "host")); !errors.As(err, &re) || re.Code != wire.CodeAuthFailed {
		t.Fatalf("wrong role: want an auth-failed error frame, got %v", err)
	}
	// The pod secret does not open a node that admits by TLS.
	if err := dial(tcp.New(secret, "pod1")); err == nil || !strings.Contains(err.Error(), "mutual TLS") {
		t.Fatalf("pod secret against a TLS node: %v", err)
	} else {
		t.Logf("pod secret: %v", err)
	}
	// A host with another CA's root refuses the node too.
	if _, err := c.host(t, c.foreign).Dial(ctx, rdma.NodeID(p.addr)); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("foreign root: %v", err)
	}

	// A host refuses a server that is not a memory node, even of the CA.
	srvTLS, err := pki.ServerTLS(filepath.Join(c.ca, pki.CACert), pki.Files(c.member, "member"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() { nc.(*tls.Conn).Handshake(); io.Copy(io.Discard, nc); nc.Close() }()
		}
	}()
	if _, err := h1.Dial(ctx, rdma.NodeID(l.Addr().String())); !errors.Is(err, memnode.ErrRole) {
		t.Fatalf("impostor server with a member certificate: %v", err)
	} else {
		t.Logf("impostor server: %v", err)
	}

	// A node without TLS says so to a TLS client.
	plain := startNode(t, t.TempDir(), "")
	if _, err := h1.Dial(ctx, rdma.NodeID(plain.addr)); err == nil || !strings.Contains(err.Error(), "does not speak TLS") {
		t.Fatalf("TLS client against a pod-secret node: %v", err)
	}
	waitLog(t, plain.log, "started a TLS handshake")

	for _, want := range []string{"TLS handshake failed", "is not a host's"} {
		waitLog(t, p.log, want)
	}
	m := scrape(t, p.metrics)
	for _, want := range []string{`aquifer_memnode_auth_failures_total{reason="wrong-role"} 2`, `aquifer_memnode_auth_failures_total{reason="tls"} 3`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q:\n%s", want, grep(m, "auth_failures"))
		}
	}
}

// deleteOn deletes segment id on node over a connection of tr.
func deleteOn(ctx context.Context, tr rdma.Transport, node string, id rdma.SegmentID) error {
	c, err := tr.Dial(ctx, rdma.NodeID(node))
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Delete(ctx, id)
}

func waitLog(t *testing.T, log *syncBuf, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(log.String(), want) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(log.String(), want) {
		t.Errorf("node log lacks %q:\n%s", want, log)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// stubCatalog is the node's view of the catalog for the authorization
// test: refs take effect at once, pending ones only when the node
// re-reads the catalog (as a lagging watch would deliver them);
// elsewhere are segments listed on other nodes only (moved away).
type stubCatalog struct {
	mu         sync.Mutex
	refs       map[uint64]bool
	pending    map[uint64]bool
	elsewhere  map[uint64]bool
	incomplete bool
	refreshes  int
}

func (s *stubCatalog) Lookup(id uint64) (listed, here, complete bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refs[id] || s.elsewhere[id], s.refs[id], !s.incomplete
}

func (s *stubCatalog) Refresh(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshes++
	if s.pending != nil {
		s.refs, s.pending = s.pending, nil
	}
	return nil
}

func (s *stubCatalog) set(now, later map[uint64]bool) {
	s.mu.Lock()
	s.refs, s.pending = now, later
	s.mu.Unlock()
}

// TestAuthorizationByCatalog serves a node with mutual TLS and a catalog
// view over a real socket: host2 may not read what host1 stored until a
// published snapshot lists it (and a catalog that lags is re-read before
// anything is refused), may not delete host1's referenced segment, may
// delete it once no snapshot lists it; host1 always reads and deletes its
// own. Writers survive a restart of the node; List reports them.
func TestAuthorizationByCatalog(t *testing.T) {
	c := newCerts(t)
	srv, _, err := memnode.ServerTLS(c.node)
	if err != nil {
		t.Fatal(err)
	}
	cat := &stubCatalog{refs: map[uint64]bool{}}
	dir := t.TempDir()
	var logBuf syncBuf
	start := func(grace time.Duration) (string, func()) {
		n, err := memnode.New(memnode.Config{Capacity: 16 << 20, TLS: srv, Catalog: cat, Grace: grace, DataDir: dir,
			Logger: slog.New(slog.NewTextHandler(&logBuf, nil)), Name: "memnode1"})
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go n.Serve(l)
		return l.Addr().String(), func() { l.Close(); n.Close() }
	}
	addr, stop := start(time.Nanosecond) // no grace: the rules alone
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	client := func(dir, addr string) (*rdma.Client, rdma.Transport) {
		tr := c.host(t, dir)
		cl, err := rdma.NewClient(rdma.Options{Transport: tr, Nodes: []rdma.NodeID{rdma.NodeID(addr)}, Replicas: 1, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl, tr
	}
	h1, tr1 := client(c.host1, addr)
	h2, tr2 := client(c.host2, addr)
	data := map[rdma.SegmentID][]byte{}
	segs := map[rdma.SegmentID]*rdma.SegmentInfo{}
	for id := rdma.SegmentID(0xa1); id <= 0xa3; id++ {
		data[id] = randData(uint64(id), 2*pageSize)
		if segs[id], err = h1.Publish(ctx, id, pageSize, data[id]); err != nil {
			t.Fatal(err)
		}
	}
	read := func(cl *rdma.Client, tr rdma.Transport, id rdma.SegmentID) error {
		dst := registered(t, tr, pageSize)
		err := cl.Read(ctx, segs[id], []rdma.PageRead{{Page: 1, Dst: dst}})
		if err == nil && !bytes.Equal(dst, data[id][pageSize:]) {
			t.Fatalf("segment %#x: wrong bytes", id)
		}
		return err
	}
	forbidden := func(what string, err error) {
		t.Helper()
		var re *wire.RemoteError
		if !errors.As(err, &re) || re.Code != wire.CodeForbidden {
			t.Fatalf("%s: want forbidden, got %v", what, err)
		}
		t.Logf("%s: %v", what, err)
	}
	// Unpublished: only the writer reads it.
	if err := read(h1, tr1, 0xa1); err != nil {
		t.Fatalf("writer's own read: %v", err)
	}
	forbidden("host2 reads an unpublished segment", read(h2, tr2, 0xa1))
	sc, err := tr2.Dial(ctx, rdma.NodeID(addr))
	if err != nil {
		t.Fatal(err)
	}
	_, err = sc.(interface {
		Stat(context.Context, rdma.SegmentID) (*wire.StatResp, error)
	}).Stat(ctx, 0xa1)
	sc.Close()
	forbidden("host2 asks for an unpublished segment's digests", err)
	// Published (the node's view already has it).
	cat.set(map[uint64]bool{0xa1: true}, nil)
	if err := read(h2, tr2, 0xa1); err != nil {
		t.Fatalf("host2 reads a published segment: %v", err)
	}
	// Published, but the node's watch has not delivered it yet: it
	// re-reads the catalog before refusing.
	cat.set(map[uint64]bool{0xa1: true}, map[uint64]bool{0xa1: true, 0xa2: true})
	if err := read(h2, tr2, 0xa2); err != nil {
		t.Fatalf("host2 reads a segment published just now: %v", err)
	}
	// Deletes: not another host's referenced segment; its own, always;
	// anyone's once no snapshot lists it (after a lagging removal too).
	forbidden("host2 deletes host1's referenced segment", deleteOn(ctx, tr2, addr, 0xa1))
	cat.set(map[uint64]bool{0xa1: true, 0xa2: true}, map[uint64]bool{0xa2: true})
	if err := deleteOn(ctx, tr2, addr, 0xa1); err != nil {
		t.Fatalf("host2 deletes a segment no snapshot lists any more: %v", err)
	}
	// A copy moved to another node (the entry lists the segment there
	// only): anyone reads it here, anyone may collect it.
	cat.mu.Lock()
	cat.elsewhere = map[uint64]bool{0xa3: true}
	cat.mu.Unlock()
	if err := read(h2, tr2, 0xa3); err != nil {
		t.Fatalf("host2 reads a segment listed on another node: %v", err)
	}
	if l, err := h2.List(ctx, rdma.NodeID(addr)); err != nil || len(l) != 2 || !l[1].Referenced || l[1].ReferencedHere || !l[0].ReferencedHere {
		t.Fatalf("list flags: %+v %v", l, err)
	}
	if err := deleteOn(ctx, tr2, addr, 0xa3); err != nil {
		t.Fatalf("host2 collects a copy listed on another node only: %v", err)
	}
	data[0xa3] = randData(3, 2*pageSize)
	if segs[0xa3], err = h1.Publish(ctx, 0xa3, pageSize, data[0xa3]); err != nil {
		t.Fatal(err)
	}
	cat.mu.Lock()
	cat.elsewhere = nil
	cat.mu.Unlock()
	// While some entries list no segments, nothing unlisted is refused.
	cat.mu.Lock()
	cat.incomplete = true
	cat.mu.Unlock()
	if err := read(h2, tr2, 0xa3); err != nil {
		t.Fatalf("incomplete catalog: %v", err)
	}
	forbidden("host2 deletes host1's referenced segment (incomplete catalog)", deleteOn(ctx, tr2, addr, 0xa2))
	cat.mu.Lock()
	cat.incomplete = false
	cat.mu.Unlock()

	// List: writers, referenced flags; usage says the node authorizes.
	l, err := h2.List(ctx, rdma.NodeID(addr))
	if err != nil || len(l) != 2 || l[0].ID != 0xa2 || !l[0].Referenced || l[1].Referenced || l[0].Writer != "host pod1/host1" || l[0].Len != 2*pageSize {
		t.Fatalf("list: %+v %v", l, err)
	}
	if u, err := h2.Usage(ctx, rdma.NodeID(addr)); err != nil || !u.Authorizing || u.CatalogIncomplete || u.Segments != 2 || u.Used != 4*pageSize {
		t.Fatalf("usage: %+v %v", u, err)
	}
	// A restarted node remembers who stored what.
	stop()
	h1.Close()
	h2.Close()
	addr, stop = start(time.Hour)
	defer stop()
	h1, _ = client(c.host1, addr)
	h2, tr2 = client(c.host2, addr)
	forbidden("after a restart, host2 deletes host1's referenced segment", deleteOn(ctx, tr2, addr, 0xa2))
	if err := deleteOn(ctx, tr1, addr, 0xa2); err != nil {
		t.Fatalf("after a restart, host1 deletes its own referenced segment: %v", err)
	}
	// Within the grace period after a put anyone reads (the catalog entry
	// comes after the segments).
	data[0xa4] = randData(4, 2*pageSize)
	if segs[0xa4], err = h1.Publish(ctx, 0xa4, pageSize, data[0xa4]); err != nil {
		t.Fatal(err)
	}
	if err := read(h2, tr2, 0xa4); err != nil {
		t.Fatalf("read within the grace period: %v", err)
	}
	if !strings.Contains(logBuf.String(), "refused read: not authorized") || !strings.Contains(logBuf.String(), "identity=\"host pod2/host2\"") {
		t.Errorf("refusals not logged:\n%s", logBuf.String())
	}
	cat.mu.Lock()
	defer cat.mu.Unlock()
	if cat.refreshes < 2 {
		t.Errorf("the node re-read the catalog %d times before refusing; want at least 2", cat.refreshes)
	}
}
