package e2e

import (
	"bufio"
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
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/pki"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/tcp"
	"github.com/aquifer-pool/aquifer/rdma/wire"
	"golang.org/x/sys/unix"
)

// The memory-node security tests run `aquifer etcd`, `aquifer memnode
// --tls-dir --etcd-endpoints` and `aquifer serve
// --memnodes-from-control-plane --memnode-tls-dir` as processes, with
// certificates from `aquifer cert`, and talk to the memory nodes as hosts
// would (package rdma over rdma/tcp with a host's certificate).

type tlsNode struct {
	cmd           *exec.Cmd
	addr, metrics string
	log           *lockedBuf
}

// certCmd runs `aquifer cert ...`.
func certCmd(t *testing.T, ctx context.Context, args ...string) {
	t.Helper()
	if out, err := exec.CommandContext(ctx, bin, append([]string{"cert"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("aquifer cert %v: %v\n%s", args, err, out)
	}
}

// startTLSMemnode runs `aquifer memnode` admitting by mutual TLS and
// registered in the control plane at endpoint.
func startTLSMemnode(t *testing.T, ctx context.Context, dir, name, tlsDir, endpoint string) *tlsNode {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, "memnode", "--name", name, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--capacity", "128MiB", "--slab-size", "64MiB", "--data-dir", dir, "--tls-dir", tlsDir, "--etcd-endpoints", endpoint,
		"--usage-interval", "100ms", "--put-grace", "1ms", "--lease-ttl", "3")
	n := &tlsNode{cmd: cmd, log: &lockedBuf{}}
	cmd.Stderr = n.log
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	got := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		re := regexp.MustCompile(`memnode listening on (\S+) \(metrics (\S+)\)`)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				got <- m[1:]
			}
		}
	}()
	select {
	case a := <-got:
		n.addr, n.metrics = a[0], a[1]
		return n
	case <-time.After(30 * time.Second):
		t.Fatalf("memnode %s did not start:\n%s", name, n.log)
	}
	return nil
}

// lockedBuf is a child's output, safe to read while it writes.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func scrapeNode(t *testing.T, addr string) string {
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

// hostClient is an rdma client with a host's certificate.
func hostClient(t *testing.T, tlsDir string, nodes ...string) (*rdma.Client, rdma.Transport) {
	t.Helper()
	cfg, _, err := memnode.ClientTLS(tlsDir)
	if err != nil {
		t.Fatal(err)
	}
	tr := tcp.NewTLS(cfg)
	var ids []rdma.NodeID
	for _, n := range nodes {
		ids = append(ids, rdma.NodeID(n))
	}
	c, err := rdma.NewClient(rdma.Options{Transport: tr, Nodes: ids, Replicas: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, tr
}

func regBuf(t *testing.T, tr rdma.Transport, n int) []byte {
	t.Helper()
	m, err := offheap.Anon(n, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := tr.Register(m.B)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Release(); m.Unmap() })
	return m.B
}

// TestMemnodeMutualTLSAndCatalog: memory nodes that admit by mutual TLS
// and authorize by the cluster catalog, as processes. A host without a
// certificate of the cluster CA, or with one of another CA, is refused; a
// segment no published snapshot lists cannot be read by another host, and
// can once a catalog entry lists it; a host cannot delete another host's
// referenced segment, and can once the entry is removed (garbage
// collection). Then the nodes' own registrations: each reports its usage
// in the control plane, a daemon started with --memnodes-from-control-plane
// (no --memnode-addrs) places a publish by that usage (away from the node
// that is nearly full), and a restore through it verifies every byte.
func TestMemnodeMutualTLSAndCatalog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	ep, _ := startEtcd(t, ctx, filepath.Join(dir, "etcd"))
	caDir := filepath.Join(dir, "etcd", "tls")
	var nodes []*tlsNode
	for i := 1; i <= 3; i++ {
		name := fmt.Sprint("m", i)
		certCmd(t, ctx, "memnode", name, "--ca-dir", caDir, "--out", filepath.Join(dir, name+".tls"), "--addr", "127.0.0.1")
		nodes = append(nodes, startTLSMemnode(t, ctx, filepath.Join(dir, name), name, filepath.Join(dir, name+".tls"), ep))
	}
	h1, h2 := filepath.Join(dir, "h1.tls"), filepath.Join(dir, "h2.tls")
	certCmd(t, ctx, "host", "pod1/host1", "--ca-dir", caDir, "--out", h1)
	certCmd(t, ctx, "host", "pod2/host2", "--ca-dir", caDir, "--out", h2)
	for _, f := range []string{"ca.crt", "host.crt", "host.key"} {
		if st, err := os.Stat(filepath.Join(h1, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	if _, err := os.Stat(filepath.Join(h1, "ca.key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("aquifer cert copied the CA key")
	}

	// Admission: no certificate, another CA's.
	m1 := nodes[0]
	caPool := x509.NewCertPool()
	if b, err := os.ReadFile(filepath.Join(caDir, "ca.crt")); err != nil || !caPool.AppendCertsFromPEM(b) {
		t.Fatal("cluster CA", err)
	}
	other := filepath.Join(dir, "other-ca")
	if _, err := pki.OpenCA(other, "another cluster's CA"); err != nil {
		t.Fatal(err)
	}
	certCmd(t, ctx, "host", "pod1/host1", "--ca-dir", other, "--out", filepath.Join(dir, "foreign.tls"))
	foreign, err := tls.LoadX509KeyPair(filepath.Join(dir, "foreign.tls", "host.crt"), filepath.Join(dir, "foreign.tls", "host.key"))
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]*tls.Config{
		"no certificate": {RootCAs: caPool, MinVersion: tls.VersionTLS13},
		"another CA's":   {RootCAs: caPool, Certificates: []tls.Certificate{foreign}, MinVersion: tls.VersionTLS13},
	} {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := tcp.NewTLS(cfg).Dial(dctx, rdma.NodeID(m1.addr))
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("a host with %s was admitted", name)
		}
		t.Logf("host with %s: %v", name, err)
	}

	// Authorization by the catalog.
	c1, tr1 := hostClient(t, h1, m1.addr)
	c2, tr2 := hostClient(t, h2, m1.addr)
	data := bytes.Repeat([]byte("aquifer!"), 4*4096/8)
	for i := range data {
		data[i] ^= byte(i / 4096)
	}
	const sid = rdma.SegmentID(0x5e9)
	seg, err := c1.Publish(ctx, sid, 4096, data)
	if err != nil {
		t.Fatal(err)
	}
	read := func(c *rdma.Client, tr rdma.Transport) error {
		dst := regBuf(t, tr, 4096)
		err := c.Read(ctx, seg, []rdma.PageRead{{Page: 3, Dst: dst}})
		if err == nil && !bytes.Equal(dst, data[3*4096:]) {
			t.Fatal("wrong bytes")
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
	if err := read(c1, tr1); err != nil {
		t.Fatalf("the writer reads its own segment: %v", err)
	}
	forbidden("host2 reads host1's unpublished segment", read(c2, tr2))
	tc, err := pki.ClientTLS(filepath.Join(caDir, "ca.crt"), pki.Files(caDir, "client"))
	if err != nil {
		t.Fatal(err)
	}
	plane, err := control.Connect(ctx, []string{ep}, control.Credentials{TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	defer plane.Close()
	entry := &control.Snapshot{Name: "authz", Published: time.Now(), Segments: []control.SegmentPlacement{
		{ID: control.FormatSegmentID(uint64(sid)), Nodes: []string{m1.addr}, Len: uint64(len(data)), Kind: "cold"}}}
	if err := plane.PutSnapshot(ctx, entry); err != nil {
		t.Fatal(err)
	}
	if err := read(c2, tr2); err != nil {
		t.Fatalf("host2 reads a published segment (right after the entry was written): %v", err)
	}
	forbidden("host2 deletes host1's referenced segment", deleteSeg(ctx, tr2, m1.addr, sid))
	if err := plane.DeleteSnapshot(ctx, "authz"); err != nil {
		t.Fatal(err)
	}
	if err := deleteSeg(ctx, tr2, m1.addr, sid); err != nil {
		t.Fatalf("host2 collects a segment no snapshot lists (right after the entry was removed): %v", err)
	}
	m := scrapeNode(t, m1.metrics)
	for _, want := range []string{`aquifer_memnode_authz_decisions_total{decision="refused",op="read"} 1`,
		`aquifer_memnode_authz_decisions_total{decision="refused",op="delete"} 1`,
		`aquifer_memnode_authz_decisions_total{decision="unreferenced",op="delete"} 1`,
		`aquifer_memnode_auth_failures_total{reason="tls"} 2`} {
		if !strings.Contains(m, want) {
			t.Errorf("m1 metrics lack %q:\n%s", want, grepRE(m, "authz_decisions|auth_failures"))
		}
	}

	// Usage in the control plane, and placement by it. m1 is nearly full
	// (host2 stores 96 MiB there); without its report it would be the
	// first choice (equal free space is broken by name).
	big := make([]byte, 48<<20)
	for k := range 2 {
		if _, err := c2.Publish(ctx, rdma.SegmentID(0xb000+k), 4096, big); err != nil {
			t.Fatal(err)
		}
	}
	usage := func() map[string]control.Member {
		ms, err := plane.MemNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]control.Member{}
		for _, m := range ms {
			out[m.ID] = m
		}
		return out
	}
	deadline := time.Now().Add(20 * time.Second)
	for u := usage(); u["m1"].Used != 96<<20; u = usage() {
		if time.Now().After(deadline) {
			t.Fatalf("m1 does not report its usage: %+v", u)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for id, m := range usage() {
		if !m.Self || m.Capacity != 128<<20 || m.Addr == "" {
			t.Fatalf("registration %s: %+v", id, m)
		}
	}
	f, img := poolFixture(t, ctx)
	secret := filepath.Join(dir, "pod.secret")
	if err := os.WriteFile(secret, []byte("e2e-pod-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startPool(t, ctx, filepath.Join(dir, "host1"), "--pod", "pod1", "--host-name", "host1", "--etcd-endpoints", ep,
		"--etcd-tls-dir", caDir, "--memnodes-from-control-plane", "--memnode-tls-dir", h1, "--secret-file", secret,
		"--cxl-size", "64MiB", "--cxl-chunk", "16MiB", "--replicas", "2")
	s.publish(t, ctx, img, "fn")
	all := []string{nodes[0].addr, nodes[1].addr, nodes[2].addr}
	inv, _ := hostClient(t, h2, all...)
	for i, n := range nodes {
		l, err := inv.List(ctx, rdma.NodeID(n.addr))
		if err != nil {
			t.Fatal(err)
		}
		var mine, theirs int
		for _, e := range l {
			switch e.Writer {
			case "host pod1/host1":
				mine++
			case "host pod2/host2":
				theirs++
			default:
				t.Errorf("m%d: segment %#x written by %q", i+1, e.ID, e.Writer)
			}
		}
		t.Logf("m%d holds %d segments of the publish, %d of host2", i+1, mine, theirs)
		if (i == 0) != (mine == 0) {
			t.Errorf("m%d holds %d segments of the publish: placement should avoid m1 (full) and use m2 and m3", i+1, mine)
		}
	}
	deadline = time.Now().Add(20 * time.Second)
	for u := usage(); u["m2"].Used == 0 || u["m3"].Used == 0 || u["m2"].Used != u["m3"].Used; u = usage() {
		if time.Now().After(deadline) {
			t.Fatalf("m2 and m3 do not report the publish (two replicas of everything): %+v", u)
		}
		time.Sleep(50 * time.Millisecond)
	}
	v := s.restore1(t, ctx, f, "vm1", "fn")
	if v.Report.ColdBytesRead == 0 {
		t.Fatalf("the restore read no cold pages from the memory nodes: %+v", v.Report)
	}
	if !strings.Contains(m1.log.String(), "refused read: not authorized") {
		t.Errorf("m1 did not log its refusal:\n%s", m1.log)
	}

	// Orphan collection: host2's two 48 MiB segments on m1 are listed by
	// no snapshot. The same daemon, restarted with a short sweep interval
	// and grace, deletes them (it leads the memory tier) and nothing else:
	// m1's usage returns to zero, the published snapshot's segments stay
	// and it restores again, every byte verified.
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
	before := usage()
	s = startPool(t, ctx, filepath.Join(dir, "host1"), "--pod", "pod1", "--host-name", "host1", "--etcd-endpoints", ep,
		"--etcd-tls-dir", caDir, "--memnodes-from-control-plane", "--memnode-tls-dir", h1, "--secret-file", secret,
		"--cxl-size", "64MiB", "--cxl-chunk", "16MiB", "--replicas", "2",
		"--memnode-gc-interval", "500ms", "--memnode-orphan-grace", "1s")
	deadline = time.Now().Add(30 * time.Second)
	for u := usage(); u["m1"].Used != 0; u = usage() {
		if time.Now().After(deadline) {
			mt, _ := s.pc.Metrics(ctx)
			t.Fatalf("the orphans on m1 were not collected: %+v\n%s", u, grepRE(mt, "memtier"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	after := usage()
	for _, n := range []string{"m2", "m3"} {
		if after[n].Used != before[n].Used {
			t.Errorf("%s: used %d bytes before the sweep, %d after: the sweep touched a listed segment", n, before[n].Used, after[n].Used)
		}
	}
	mt, err := s.pc.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := metric(t, mt, "aquifer_memtier_orphans_deleted_total"); got != 2 {
		t.Errorf("aquifer_memtier_orphans_deleted_total = %v, want 2", got)
	}
	if got := metric(t, mt, "aquifer_memtier_orphan_bytes_deleted_total"); got != 96<<20 {
		t.Errorf("aquifer_memtier_orphan_bytes_deleted_total = %v, want %d", got, 96<<20)
	}
	s.restore1(t, ctx, f, "vm2", "fn")
	t.Logf("orphan sweep: m1 %d -> 0 bytes; m2 %d, m3 %d bytes untouched", before["m1"].Used, after["m2"].Used, after["m3"].Used)
}

// deleteSeg deletes segment id on node over a connection of tr.
func deleteSeg(ctx context.Context, tr rdma.Transport, node string, id rdma.SegmentID) error {
	c, err := tr.Dial(ctx, rdma.NodeID(node))
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Delete(ctx, id)
}

func grepRE(s, pattern string) string {
	re := regexp.MustCompile(pattern)
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
