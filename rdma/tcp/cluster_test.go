package tcp_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/tcp"
	"github.com/aquifer-pool/aquifer/rdma/wire"
	"golang.org/x/sys/unix"
)

const (
	roleEnv  = "AQUIFER_TEST_MEMNODE_ROLE"
	readyTag = "AQUIFER_MEMNODE_READY "
	pageSize = 4096
)

var secret = []byte("pod-secret-for-tests-0123456789")

// TestMain lets the test binary act as a memory node process: the same
// memnode.Run that `aquifer memnode` calls.
func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "memnode" {
		cfg := memnode.Config{
			Listen:            "127.0.0.1:0",
			MetricsListen:     "127.0.0.1:0",
			Capacity:          256 << 20,
			SlabSize:          64 << 20,
			DataDir:           os.Getenv("AQ_MEMNODE_DIR"),
			Secret:            []byte(os.Getenv("AQ_MEMNODE_SECRET")),
			FaultCorruptReads: os.Getenv("AQ_MEMNODE_FAULT") == "corrupt",
			Logger:            slog.New(slog.NewTextHandler(os.Stderr, nil)),
		}
		if d := os.Getenv("AQ_MEMNODE_TLS_DIR"); d != "" {
			var err error
			if cfg.TLS, _, err = memnode.ServerTLS(d); err != nil {
				fmt.Fprintln(os.Stderr, "memnode:", err)
				os.Exit(1)
			}
			cfg.Secret = nil
		}
		err := memnode.Run(context.Background(), cfg, func(addr, maddr string) {
			fmt.Printf("%s%s %s\n", readyTag, addr, maddr)
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "memnode:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// syncBuf is a goroutine-safe log sink for a child's stderr.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type proc struct {
	cmd     *exec.Cmd
	addr    string
	metrics string
	log     *syncBuf
}

// startNode runs a memory node process on a loopback port.
func startNode(t *testing.T, dir, fault string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=memnode", "AQ_MEMNODE_DIR="+dir, "AQ_MEMNODE_SECRET="+string(secret), "AQ_MEMNODE_FAULT="+fault)
	cmd.Env = append(cmd.Env, env...)
	p := &proc{cmd: cmd, log: &syncBuf{}}
	cmd.Stderr = p.log
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, readyTag) {
		t.Fatalf("memnode did not start: %q %v\n%s", line, err, p.log)
	}
	f := strings.Fields(strings.TrimPrefix(line, readyTag))
	p.addr, p.metrics = f[0], f[1]
	if !strings.HasPrefix(p.addr, "127.0.0.1:") {
		t.Fatalf("node bound %s, want loopback", p.addr)
	}
	return p
}

func (p *proc) kill(t *testing.T) {
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
}

func randData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 11))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

func registered(t *testing.T, tr rdma.Transport, n int) []byte {
	m, err := offheap.Anon(n, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := tr.Register(m.B)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Release(); m.Unmap() })
	return m.B
}

// TestThreeNodeReplication is the acceptance test: three memnode processes,
// segments at R=2, one node SIGKILLed during a stream of reads (every read
// must complete with the right bytes), then that node restarted from its data
// dir with a fault that corrupts every page it returns (the client must
// detect it by digest and bypass it).
func TestThreeNodeReplication(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	var nodes []*proc
	var ids []rdma.NodeID
	for _, d := range dirs {
		p := startNode(t, d, "")
		nodes = append(nodes, p)
		ids = append(ids, rdma.NodeID(p.addr))
	}
	tr := tcp.New(secret, "pod-a")
	c, err := rdma.NewClient(rdma.Options{Transport: tr, Nodes: ids, Replicas: 2, ReadTimeout: 500 * time.Millisecond, DownFor: time.Minute, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	const nseg, pages = 24, 64
	segs := make([]*rdma.SegmentInfo, nseg)
	data := make([][]byte, nseg)
	onVictim := 0
	for i := range segs {
		data[i] = randData(uint64(i), pages*pageSize)
		if segs[i], err = c.Publish(ctx, rdma.SegmentID(1000+i), pageSize, data[i]); err != nil {
			t.Fatal(err)
		}
		for _, r := range segs[i].Replicas {
			if r.Node == ids[0] {
				onVictim++
			}
		}
	}
	if onVictim == 0 || onVictim == nseg {
		t.Fatalf("placement put %d of %d segments on node 0; the test needs some", onVictim, nseg)
	}

	// Stream of reads from 4 goroutines; node 0 is SIGKILLed mid-stream.
	var reads, victimReads atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errc := make(chan error, 4)
	for w := range 4 {
		dst := registered(t, tr, 16*pageSize)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 3))
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := r.IntN(nseg)
				n := 1 + r.IntN(16)
				first := r.IntN(pages - n + 1)
				reqs := make([]rdma.PageRead, n)
				for k := range reqs {
					reqs[k] = rdma.PageRead{Page: first + k, Dst: dst[k*pageSize : (k+1)*pageSize]}
				}
				if err := c.Read(ctx, segs[s], reqs); err != nil {
					errc <- fmt.Errorf("read seg %d pages [%d,+%d): %w", s, first, n, err)
					return
				}
				if !bytes.Equal(dst[:n*pageSize], data[s][first*pageSize:(first+n)*pageSize]) {
					errc <- fmt.Errorf("seg %d pages [%d,+%d): wrong bytes", s, first, n)
					return
				}
				reads.Add(1)
				for _, rp := range segs[s].Replicas {
					if rp.Node == ids[0] {
						victimReads.Add(1)
					}
				}
			}
		}()
	}
	waitFor := func(n int64) {
		deadline := time.Now().Add(20 * time.Second)
		for reads.Load() < n && time.Now().Before(deadline) && len(errc) == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	waitFor(300)
	before := reads.Load()
	nodes[0].kill(t)
	waitFor(before + 1500)
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	st := c.Stats()
	t.Logf("%d reads (%d before the kill, %d of segments with a copy on the killed node), stats %+v, demand latency %s",
		reads.Load(), before, victimReads.Load(), st, c.Latency(rdma.Demand))
	if reads.Load() < before+1500 {
		t.Fatalf("only %d reads after the kill", reads.Load()-before)
	}
	if st.NodeErrors == 0 || st.Failovers == 0 {
		t.Fatalf("the kill was not exercised: %+v", st)
	}

	// Restart node 0 from its data dir, now lying about every page.
	p0 := startNode(t, dirs[0], "corrupt")
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(p0.log.String(), "loaded segments from data dir"); {
		if time.Now().After(deadline) { // stderr is copied asynchronously
			t.Fatalf("restarted node did not log loading its segments:\n%s", p0.log)
		}
		time.Sleep(5 * time.Millisecond)
	}
	sc, err := tr.Dial(ctx, rdma.NodeID(p0.addr))
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range segs {
		for _, r := range s.Replicas {
			if r.Node != ids[0] {
				continue
			}
			st, err := sc.(interface {
				Stat(context.Context, rdma.SegmentID) (*wire.StatResp, error)
			}).Stat(ctx, s.ID)
			if err != nil || len(st.Digests) != pages || st.Digests[7] != s.Digests[7] {
				t.Fatalf("segment %d not served again after restart: %v", i, err)
			}
		}
	}
	sc.Close()
	newIDs := []rdma.NodeID{rdma.NodeID(p0.addr), ids[1], ids[2]}
	c2, err := rdma.NewClient(rdma.Options{Transport: tr, Nodes: newIDs, Replicas: 2, ReadTimeout: 500 * time.Millisecond, DownFor: time.Minute, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	dst := registered(t, tr, pages*pageSize)
	for i, s := range segs {
		s2 := *s
		s2.Replicas = nil
		for _, r := range s.Replicas {
			if r.Node == ids[0] {
				r.Node = newIDs[0]
			}
			// read the corrupt node first so it is surely exercised
			s2.Replicas = append([]rdma.Replica{r}, s2.Replicas...)
			if r.Node != newIDs[0] {
				s2.Replicas = append(s2.Replicas[1:], r)
			}
		}
		reqs := make([]rdma.PageRead, pages)
		for k := range reqs {
			reqs[k] = rdma.PageRead{Page: k, Dst: dst[k*pageSize : (k+1)*pageSize]}
		}
		clear(dst)
		if err := c2.Read(ctx, &s2, reqs); err != nil {
			t.Fatalf("segment %d: %v", i, err)
		}
		if !bytes.Equal(dst, data[i]) {
			t.Fatalf("segment %d: wrong bytes past the corrupting node", i)
		}
	}
	if st := c2.Stats(); st.DigestFailures == 0 {
		t.Fatalf("the corrupting node was never detected: %+v", st)
	} else {
		t.Logf("corrupting node detected by digest: %+v", st)
	}
}

// TestBadRequestsRefused sends unauthenticated, wrongly authenticated,
// malformed and out-of-bounds requests to a memnode process and checks each
// gets a clear error while a legitimate client keeps being served.
func TestBadRequestsRefused(t *testing.T) {
	p := startNode(t, t.TempDir(), "")
	tr := tcp.New(secret, "pod-a")
	ctx := context.Background()
	good, err := tr.Dial(ctx, rdma.NodeID(p.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	data := randData(1, 4*pageSize)
	ref, err := good.Write(ctx, &rdma.WriteSegment{ID: 1, PageSize: pageSize, Data: data, Digests: rdma.PageDigests(data, pageSize)})
	if err != nil {
		t.Fatal(err)
	}
	// Under the pod secret the writer is the pod the client claims.
	if p, err := good.(rdma.Inventory).ListFrom(ctx, 0, 0); err != nil || len(p.Segments) != 1 || p.Segments[0].Writer != "pod pod-a" || p.More {
		t.Fatalf("list under the pod secret: %+v %v", p, err)
	}
	dst := registered(t, tr, pageSize)
	checkGood := func() {
		t.Helper()
		clear(dst)
		if err := good.PostReads([]rdma.ReadOp{{Seg: ref, Off: pageSize, Dst: dst, Cookie: 1}}); err != nil {
			t.Fatal(err)
		}
		cs, err := rdma.PollAll(ctx, good, 1)
		if err != nil || cs[0].Err != nil || !bytes.Equal(dst, data[pageSize:2*pageSize]) {
			t.Fatalf("legitimate client no longer served: %v %+v", err, cs)
		}
	}
	checkGood()

	// Wrong secret.
	_, err = tcp.New([]byte("not-the-pod-secret-xxxxxxxxxxxxx"), "intruder").Dial(ctx, rdma.NodeID(p.addr))
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != wire.CodeAuthFailed {
		t.Fatalf("wrong secret: got %v", err)
	}
	t.Logf("wrong secret: %v", err)
	checkGood()

	// No credential: a read straight after hello.
	raw := func() (net.Conn, *bufio.Reader) {
		nc, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(nc)
		var hb [wire.HeaderSize]byte
		h, err := wire.ReadHeader(br, &hb)
		if err != nil || h.Op != wire.OpHello {
			t.Fatalf("no hello: %v", err)
		}
		io.CopyN(io.Discard, br, int64(h.Len))
		return nc, br
	}
	expectErr := func(br *bufio.Reader, want wire.Code) *wire.RemoteError {
		t.Helper()
		var hb [wire.HeaderSize]byte
		h, err := wire.ReadHeader(br, &hb)
		if err != nil || h.Op != wire.OpError {
			t.Fatalf("want error frame, got %+v %v", h, err)
		}
		b := make([]byte, h.Len)
		io.ReadFull(br, b)
		e := wire.DecodeError(b)
		if e.Code != want {
			t.Fatalf("got %v, want code %v", e, want)
		}
		return e
	}
	frame := func(op wire.Op, body []byte) []byte {
		b := make([]byte, wire.HeaderSize, wire.HeaderSize+len(body))
		wire.PutHeader(b, wire.Header{Op: op, Len: uint32(len(body)), ID: 5})
		return append(b, body...)
	}
	nc, br := raw()
	nc.Write(frame(wire.OpRead, wire.EncodeRead(nil, &wire.Read{Segment: 1, Ops: []wire.ReadOp{{Off: 0, Len: pageSize}}})))
	t.Logf("no credential: %v", expectErr(br, wire.CodeUnauthenticated))
	nc.Close()
	checkGood()

	// Garbage instead of a frame.
	nc, br = raw()
	nc.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
	expectErr(br, wire.CodeUnauthenticated)
	nc.Close()

	// Authenticated, then malformed and out-of-bounds requests on the same
	// connection: each answered, the connection stays usable.
	nc, err = net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	br = bufio.NewReader(nc)
	var hb [wire.HeaderSize]byte
	h, _ := wire.ReadHeader(br, &hb)
	hb2 := make([]byte, h.Len)
	io.ReadFull(br, hb2)
	hello, _ := wire.DecodeHello(hb2)
	a := &wire.Auth{Pod: "pod-a"}
	a.MAC = wire.ClientMAC(secret, hello.Nonce, a.ClientNonce, a.Pod)
	nc.Write(frame(wire.OpAuth, wire.EncodeAuth(nil, a)))
	if h, err := wire.ReadHeader(br, &hb); err != nil || h.Op != wire.OpAuthOK {
		t.Fatalf("auth: %+v %v", h, err)
	}
	io.CopyN(io.Discard, br, wire.MACSize)
	cases := []struct {
		name string
		b    []byte
		code wire.Code
	}{
		{"truncated read", frame(wire.OpRead, []byte{1, 2, 3}), wire.CodeMalformed},
		{"out of bounds", frame(wire.OpRead, wire.EncodeRead(nil, &wire.Read{Segment: 1, Ops: []wire.ReadOp{{Off: 4 * pageSize, Len: pageSize}}})), wire.CodeOutOfBounds},
		{"offset overflow", frame(wire.OpRead, wire.EncodeRead(nil, &wire.Read{Segment: 1, Ops: []wire.ReadOp{{Off: ^uint64(0) - 10, Len: pageSize}}})), wire.CodeOutOfBounds},
		{"unknown segment", frame(wire.OpRead, wire.EncodeRead(nil, &wire.Read{Segment: 99, Ops: []wire.ReadOp{{Off: 0, Len: pageSize}}})), wire.CodeNotFound},
		{"bad digest put", frame(wire.OpPut, append(wire.EncodePutPrefix(nil, &wire.Put{Segment: 2, PageSize: pageSize, Digests: []uint64{1}}), make([]byte, pageSize)...)), wire.CodeMalformed},
		{"immutable conflict", frame(wire.OpPut, append(wire.EncodePutPrefix(nil, &wire.Put{Segment: 1, PageSize: pageSize, Digests: rdma.PageDigests(make([]byte, 4*pageSize), pageSize)}), make([]byte, 4*pageSize)...)), wire.CodeExists},
		{"second auth", frame(wire.OpAuth, wire.EncodeAuth(nil, a)), wire.CodeMalformed},
	}
	for _, tc := range cases {
		nc.Write(tc.b)
		t.Logf("%s: %v", tc.name, expectErr(br, tc.code))
		checkGood()
	}
	// Oversized frame: refused and that connection closed.
	big := make([]byte, wire.HeaderSize)
	wire.PutHeader(big, wire.Header{Op: wire.OpRead, Len: 1 << 30, ID: 1})
	nc.Write(big)
	expectErr(br, wire.CodeTooLarge)
	checkGood()

	// Every refusal of admission was logged with slog and counted.
	for _, want := range []string{"wrong pod credential", "reason=wrong-credential", "reason=missing-credential", "pod=intruder"} {
		deadline := time.Now().Add(5 * time.Second) // stderr is copied asynchronously
		for !strings.Contains(p.log.String(), want) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if !strings.Contains(p.log.String(), want) {
			t.Errorf("node log lacks %q:\n%s", want, p.log)
		}
	}
	resp, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.metrics)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(resp, "GET /metrics HTTP/1.0\r\n\r\n")
	body, _ := io.ReadAll(resp)
	resp.Close()
	for _, want := range []string{`aquifer_memnode_auth_failures_total{reason="wrong-credential"} 1`, `aquifer_memnode_request_errors_total{code="5"} 2`, "aquifer_memnode_read_ops_total", "aquifer_memnode_segments 1"} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestHungNodeTimesOut freezes one of two memnode processes (SIGSTOP): its
// TCP connection stays open but nothing answers, so only the per-attempt
// timeout can save the reads. Every read must still return correct bytes.
func TestHungNodeTimesOut(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, b := startNode(t, t.TempDir(), ""), startNode(t, t.TempDir(), "")
	tr := tcp.New(secret, "pod-a")
	ids := []rdma.NodeID{rdma.NodeID(a.addr), rdma.NodeID(b.addr)}
	c, err := rdma.NewClient(rdma.Options{Transport: tr, Nodes: ids, ReadTimeout: 100 * time.Millisecond, DownFor: time.Minute, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	var segs []*rdma.SegmentInfo
	var data [][]byte
	for i := range 6 {
		d := randData(uint64(50+i), 8*pageSize)
		s, err := c.Publish(ctx, rdma.SegmentID(50+i), pageSize, d)
		if err != nil {
			t.Fatal(err)
		}
		segs, data = append(segs, s), append(data, d)
	}
	dst := registered(t, tr, 8*pageSize)
	read := func(i int) {
		t.Helper()
		reqs := make([]rdma.PageRead, 8)
		for k := range reqs {
			reqs[k] = rdma.PageRead{Page: k, Dst: dst[k*pageSize : (k+1)*pageSize]}
		}
		clear(dst)
		if err := c.Read(ctx, segs[i], reqs); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(dst, data[i]) {
			t.Fatalf("segment %d: wrong bytes", i)
		}
	}
	for i := range segs {
		read(i) // warm both connections
	}
	// Freeze the node the client tries first for segment 0 (the client
	// starts at replica ID mod R), so at least one read must time out.
	first := segs[0].Replicas[int(uint64(segs[0].ID)%uint64(len(segs[0].Replicas)))].Node
	if string(first) == b.addr {
		a, b = b, a
	}
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer a.cmd.Process.Signal(syscall.SIGCONT)
	waitStopped(t, a.cmd.Process.Pid)
	start := time.Now()
	for i := range segs {
		read(i)
	}
	st := c.Stats()
	t.Logf("6 segments read in %v with node %s frozen: %+v", time.Since(start), a.addr, st)
	if st.Timeouts == 0 {
		t.Fatalf("no read timed out although a replica was frozen: %+v", st)
	}
}

// waitStopped waits until every thread of process pid is stopped: kill(2)
// only queues SIGSTOP, and a thread that is running or about to run can
// still answer a request before it stops.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			t.Fatalf("threads of process %d: %v", pid, err)
		}
		stopped := 0
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			// The state follows the command name in parentheses.
			if i := bytes.LastIndexByte(b, ')'); err == nil && i >= 0 && i+2 < len(b) && b[i+2] == 'T' {
				stopped++
			}
		}
		if stopped == len(tasks) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d: %d of %d threads stopped 10 s after SIGSTOP", pid, stopped, len(tasks))
		}
		time.Sleep(time.Millisecond)
	}
}
