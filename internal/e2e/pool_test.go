package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/internal/testsnap"
	"github.com/aquifer-pool/aquifer/wset"
)

// The pool tests run the whole hierarchical pool as processes: `aquifer
// serve --embedded` (embedded etcd, emulated CXL region, memory nodes),
// `aquifer publish`, `aquifer pool init|ls`, `aquifer memnode`, and the
// guest emulator as the Firecracker stand-in, which verifies every byte it
// touches against the snapshot and exits non-zero on any mismatch.

const poolMemSize = 96 << 20

// poolFixture makes a small snapshot, records its working set and converts
// it into an Aquifer image.
func poolFixture(t *testing.T, ctx context.Context) (*fixture, string) {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{dir: dir, mem: filepath.Join(dir, "mem"), trace: filepath.Join(dir, "trace.ws")}
	var err error
	if f.kinds, err = testsnap.Write(f.mem, testsnap.Spec{Size: poolMemSize, ZeroFrac: 0.6, Seed: 11}); err != nil {
		t.Fatal(err)
	}
	tr := testsnap.Trace(testsnap.TraceSpec{MemSize: poolMemSize, Accesses: 6000, Pages: 3000, WriteFrac: 0.2, CPUs: 2, Seed: 12})
	if err := wset.WriteFile(f.trace, tr); err != nil {
		t.Fatal(err)
	}
	rec := record(t, ctx, f)
	img := filepath.Join(dir, "img")
	if out, err := exec.CommandContext(ctx, bin, "convert", "--mem", f.mem, "--ws", rec, "--out", img).CombinedOutput(); err != nil {
		t.Fatalf("convert: %v\n%s", err, out)
	}
	return f, img
}

// slow returns f with a trace that keeps each guest running for about two
// seconds, mostly asleep between accesses (think time), so that a test can
// kill something while restores are certainly in flight.
func slow(t *testing.T, f *fixture) *fixture {
	t.Helper()
	g := *f
	g.trace = filepath.Join(f.dir, "slow.ws")
	tr := testsnap.Trace(testsnap.TraceSpec{MemSize: poolMemSize, Accesses: 400, Pages: 300, WriteFrac: 0.2, CPUs: 2,
		Think: 10 * time.Millisecond, Seed: 13})
	if err := wset.WriteFile(g.trace, tr); err != nil {
		t.Fatal(err)
	}
	return &g
}

// poolServer is a running `aquifer serve --embedded`.
type poolServer struct {
	cmd *exec.Cmd
	api string
	pc  *client.Client
}

// startPool runs `aquifer serve --embedded` on data directory dir and the
// CXL region dir/cxl, with extra args.
func startPool(t *testing.T, ctx context.Context, dir string, args ...string) *poolServer {
	t.Helper()
	api := filepath.Join(dir, "api.sock")
	os.Remove(api)
	a := append([]string{"serve", "--embedded", "--data-dir", filepath.Join(dir, "d"), "--cxl-path", filepath.Join(dir, "cxl"),
		"--api", api, "--socket-dir", filepath.Join(dir, "vms"), "--log-level", "warn"}, args...)
	cmd := exec.CommandContext(ctx, bin, a...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &poolServer{cmd: cmd, api: api, pc: client.New(api, client.Options{})}
	t.Cleanup(func() { s.kill() })
	// A restarted daemon waits out its predecessor's CXL lease (10 s).
	deadline := time.Now().Add(45 * time.Second)
	for {
		if st, err := os.Stat(api); err == nil && st.Mode()&os.ModeSocket != 0 {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("aquifer serve --embedded did not open %s", api)
		}
		if cmd.ProcessState != nil {
			t.Fatalf("aquifer serve exited: %v", cmd.ProcessState)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill SIGKILLs the daemon (a crash: nothing is cleaned up).
func (s *poolServer) kill() {
	if s.cmd.ProcessState == nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
}

// publish runs `aquifer publish` and returns its output line.
func (s *poolServer) publish(t *testing.T, ctx context.Context, img, name string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, "publish", img, "--name", name, "--api", s.api).CombinedOutput()
	if err != nil {
		t.Fatalf("publish %s: %v\n%s", name, err, out)
	}
	return strings.TrimSpace(string(out))
}

// poolLS runs `aquifer pool ls` and returns each snapshot's hot tier.
func (s *poolServer) poolLS(t *testing.T, ctx context.Context) map[string]string {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, "pool", "ls", "--api", s.api).CombinedOutput()
	if err != nil {
		t.Fatalf("pool ls: %v\n%s", err, out)
	}
	tiers := map[string]string{}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "NAME") {
		t.Fatalf("pool ls printed %q", out)
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 3 {
			t.Fatalf("pool ls line %q", l)
		}
		tiers[f[0]] = f[2]
	}
	return tiers
}

// restore runs one guest through the daemon: prepare, load through the
// UFFD socket, resume once the daemon says the hot set is installed,
// replay the trace verifying every byte. It returns the daemon's view of
// the VM after the guest exited. Safe to call from any goroutine.
func (s *poolServer) restore(ctx context.Context, f *fixture, vm, snap string) (*api.VM, error) {
	cmd := exec.CommandContext(ctx, bin, "guest", "run", "--json", "--mem", f.mem, "--trace", f.trace,
		"--pager-api", s.api, "--vm", vm, "--snapshot", snap, "--vcpus", "2")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("guest %s: %v\nstdout: %s\nstderr: %s", vm, err, out.String(), errb.String())
	}
	var rep guestReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		return nil, fmt.Errorf("guest %s report: %v: %s", vm, err, out.String())
	}
	if rep.Mismatches != 0 || rep.Verified == 0 {
		return nil, fmt.Errorf("vm %s: guest report %+v", vm, rep)
	}
	// The daemon records the report when the handler sees the VM go.
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := s.pc.Get(ctx, vm)
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", vm, err)
		}
		if v.State == api.StateExited || v.State == api.StateFailed || time.Now().After(deadline) {
			if v.State != api.StateExited || v.Report == nil {
				return nil, fmt.Errorf("vm %s: daemon state %s (%s), report %v", vm, v.State, v.Error, v.Report)
			}
			return v, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// restore1 is restore on the test's goroutine.
func (s *poolServer) restore1(t *testing.T, ctx context.Context, f *fixture, vm, snap string) *api.VM {
	t.Helper()
	v, err := s.restore(ctx, f, vm, snap)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// restoreMany runs n restores at once, VM ids prefix-0..n-1; all must
// succeed.
func (s *poolServer) restoreMany(t *testing.T, ctx context.Context, f *fixture, prefix, snap string, n int) []*api.VM {
	t.Helper()
	vms, errs := make([]*api.VM, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], errs[i] = s.restore(ctx, f, fmt.Sprintf("%s-%d", prefix, i), snap)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return vms
}

// metric returns the value of one exposition line (0 when absent).
func metric(t *testing.T, text, name string) float64 {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %q", name, l)
			}
			return v
		}
	}
	return 0
}

// TestPoolPublishRestore publishes an image into the embedded pod and
// restores it at concurrency 1 and 16: every byte verified by the guest,
// the hot set pre-installed from CXL before each VM was resumed, cold pages
// served from the memory nodes.
func TestPoolPublishRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	s := startPool(t, ctx, t.TempDir())
	out := s.publish(t, ctx, img, "fn")
	if !strings.Contains(out, "hot set in CXL") {
		t.Fatalf("hot segment not placed in CXL: %s", out)
	}
	if tiers := s.poolLS(t, ctx); tiers["fn"] != "cxl" {
		t.Fatalf("pool ls: %v", tiers)
	}
	var cold uint64
	for _, conc := range []int{1, 16} {
		vms := s.restoreMany(t, ctx, f, fmt.Sprint("c", conc), "fn", conc)
		for _, v := range vms {
			r := v.Report
			// Ready (hot set installed) was reached before the guest
			// resumed: the guest waited on /ready, which only answers
			// after the pre-install; the report says what was installed.
			if r.PreinstallPages == 0 || r.HotSource != "cxl" || v.ReadyNS == 0 {
				t.Fatalf("vm %s: hot set not pre-installed from CXL: ready %dns report %+v", v.ID, v.ReadyNS, r)
			}
			cold += r.ColdBytesRead
		}
	}
	m, err := s.pc.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ok := metric(t, m, `aquifer_restores_total{outcome="ok"}`); ok != 17 {
		t.Fatalf("aquifer_restores_total ok = %v, want 17", ok)
	}
	if metric(t, m, "aquifer_preinstall_bytes_total") == 0 || cold == 0 || metric(t, m, "aquifer_cold_bytes_total") != float64(cold) {
		t.Fatalf("pre-install/cold bytes: metrics %v / %v, reports %d", metric(t, m, "aquifer_preinstall_bytes_total"),
			metric(t, m, "aquifer_cold_bytes_total"), cold)
	}
	t.Logf("17 restores verified; cold bytes read %d", cold)
}

// startMemnode runs `aquifer memnode` on a kernel-chosen port and returns
// the process and its address.
func startMemnode(t *testing.T, ctx context.Context, dir, secret string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, "memnode", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--capacity", "512MiB",
		"--slab-size", "64MiB", "--data-dir", dir, "--secret-file", secret, "--log-level", "warn")
	cmd.Stderr = os.Stderr
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
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		re := regexp.MustCompile(`memnode listening on (\S+)`)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case a := <-addr:
		return cmd, a
	case <-time.After(20 * time.Second):
		t.Fatal("memnode did not report its address")
	}
	return nil, ""
}

// poolInit runs `aquifer pool init` for startPool's layout.
func poolInit(t *testing.T, ctx context.Context, dir string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, append([]string{"pool", "init", "--data-dir", filepath.Join(dir, "d"),
		"--cxl-path", filepath.Join(dir, "cxl")}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("pool init: %v\n%s", err, out)
	}
	return string(out)
}

// TestPoolMemnodeFailure runs the pod on three separate memory node
// processes (two replicas of every segment) and SIGKILLs one while
// restores are running: no restore fails, and restores started after the
// loss still verify every byte.
func TestPoolMemnodeFailure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	out := poolInit(t, ctx, dir, "--cxl-size", "64MiB", "--chunk-size", "16MiB")
	secret := filepath.Join(dir, "d", "pod.secret")
	if !strings.Contains(out, "created") {
		t.Fatalf("pool init did not create the secret: %s", out)
	}
	if st, err := os.Stat(secret); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("pod secret: %v %v", st, err)
	}
	var nodes []*exec.Cmd
	var addrs []string
	for i := range 3 {
		c, a := startMemnode(t, ctx, filepath.Join(dir, fmt.Sprint("m", i)), secret)
		nodes, addrs = append(nodes, c), append(addrs, a)
	}
	s := startPool(t, ctx, dir, "--memnode-addrs", strings.Join(addrs, ","), "--secret-file", secret)
	s.publish(t, ctx, img, "fn")

	// Several restores; once the first is being served, a memory node dies.
	const n = 6
	errs := make([]error, n)
	var wg sync.WaitGroup
	sf := slow(t, f)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.restore(ctx, sf, fmt.Sprint("a-", i), "fn")
		}()
	}
	t.Logf("killing memory node %s with %d restores in flight", addrs[0], waitInFlight(t, ctx, s.pc, "a-", n, n/2))
	nodes[0].Process.Signal(syscall.SIGKILL)
	nodes[0].Wait()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("restores during the memory node's loss: %v", err)
	}
	// Every restore after the loss reads its cold pages without node 0.
	vms := s.restoreMany(t, ctx, f, "b", "fn", 4)
	for _, v := range vms {
		if v.Report.ColdBytesRead == 0 {
			t.Fatalf("vm %s read no cold pages: %+v", v.ID, v.Report)
		}
	}
	m, _ := s.pc.Metrics(ctx)
	if failed := metric(t, m, `aquifer_restores_total{outcome="failed"}`); failed != 0 {
		t.Fatalf("%v restores failed", failed)
	}
}

// inFlight counts VMs prefix0..prefix(n-1) the daemon is still serving.
func inFlight(ctx context.Context, pc *client.Client, prefix string, n int) int {
	live := 0
	for i := range n {
		if v, err := pc.Get(ctx, fmt.Sprint(prefix, i)); err == nil && (v.State == api.StateInstalling || v.State == api.StateReady) {
			live++
		}
	}
	return live
}

// waitInFlight waits until at least want of VMs prefix0..prefix(n-1) are
// being served (installing or ready) and returns how many are.
func waitInFlight(t *testing.T, ctx context.Context, pc *client.Client, prefix string, n, want int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if live := inFlight(ctx, pc, prefix, n); live >= want {
			return live
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("fewer than %d of %d restores were ever in flight at once; the test would prove nothing", want, n)
	return 0
}

// TestPoolPagerRestart SIGKILLs `aquifer serve` while restores are in
// flight, kills their guests too, starts the daemon again on the same data
// directory, CXL region and memory nodes, and restores again: the catalog
// survived, the VMs whose VMMs are gone were forgotten (records removed,
// not listed), and every byte served by the new incarnation verifies.
// (restart_test.go has the restart under live guests.)
func TestPoolPagerRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	s := startPool(t, ctx, dir)
	s.publish(t, ctx, img, "fn")
	s.restore1(t, ctx, f, "warm", "fn")

	// Restores in flight when the daemon dies; their guests are killed
	// too, before the daemon comes back.
	var guests []*exec.Cmd
	sf := slow(t, f)
	for i := range 4 {
		g := exec.CommandContext(ctx, bin, "guest", "run", "--mem", sf.mem, "--trace", sf.trace, "--pager-api", s.api,
			"--vm", fmt.Sprint("x", i), "--snapshot", "fn", "--vcpus", "2")
		if err := g.Start(); err != nil {
			t.Fatal(err)
		}
		guests = append(guests, g)
	}
	t.Logf("killing aquifer serve with %d restores in flight", waitInFlight(t, ctx, s.pc, "x", 4, 2))
	s.kill()
	for _, g := range guests {
		g.Process.Kill()
		g.Wait()
	}

	s = startPool(t, ctx, dir)
	if tiers := s.poolLS(t, ctx); tiers["fn"] != "cxl" {
		t.Fatalf("after restart pool ls: %v", tiers)
	}
	if vms, err := s.pc.VMs(ctx); err != nil || len(vms) != 0 {
		t.Fatalf("VMs of dead VMMs after the restart: %+v %v", vms, err)
	}
	if recs, _ := filepath.Glob(filepath.Join(dir, "vms.state", "*.vm")); len(recs) != 0 {
		t.Fatalf("records of dead VMMs after the restart: %v", recs)
	}
	for _, v := range s.restoreMany(t, ctx, f, "y", "fn", 4) {
		if v.Report.PreinstallPages == 0 || v.Report.HotSource != "cxl" {
			t.Fatalf("vm %s after restart: %+v", v.ID, v.Report)
		}
	}
}

// TestPoolCXLEviction gives the pod a CXL tier that holds only two hot
// segments: publishing a third demotes the least recently restored one to
// the RDMA tier (never losing it), and restoring the demoted snapshot still
// verifies every byte, its hot set now pre-installed from the RDMA copy.
func TestPoolCXLEviction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	// Two 4 MiB chunks: one hot segment (about 2.4 MiB here) per chunk.
	out := poolInit(t, ctx, dir, "--cxl-size", "12MiB", "--chunk-size", "4MiB")
	if !strings.Contains(out, "2 chunks") {
		t.Fatalf("pool init: %s", out)
	}
	// A formatted region is never formatted again by accident.
	again, err := exec.CommandContext(ctx, bin, "pool", "init", "--data-dir", filepath.Join(dir, "d"), "--cxl-path",
		filepath.Join(dir, "cxl"), "--cxl-size", "12MiB", "--chunk-size", "4MiB").CombinedOutput()
	if err == nil || !strings.Contains(string(again), "--force") {
		t.Fatalf("pool init over an existing region: %v: %s", err, again)
	}
	s := startPool(t, ctx, dir)
	for _, name := range []string{"a", "b"} {
		if out := s.publish(t, ctx, img, name); !strings.Contains(out, "hot set in CXL") {
			t.Fatalf("%s not placed in CXL: %s", name, out)
		}
	}
	// a is restored, b is not: b is the least recently restored.
	if v := s.restore1(t, ctx, f, "a1", "a"); v.Report.HotSource != "cxl" {
		t.Fatalf("a: %+v", v.Report)
	}
	if out := s.publish(t, ctx, img, "c"); !strings.Contains(out, "hot set in CXL") {
		t.Fatalf("c not placed in CXL: %s", out)
	} else {
		t.Log(out)
	}
	tiers := s.poolLS(t, ctx)
	if tiers["a"] != "cxl" || tiers["b"] != "rdma" || tiers["c"] != "cxl" {
		t.Fatalf("after the third publish, want a, c in CXL and b demoted: %v", tiers)
	}
	v := s.restore1(t, ctx, f, "b1", "b")
	if v.Report.PreinstallPages == 0 || !strings.HasPrefix(v.Report.HotSource, "rdma") {
		t.Fatalf("demoted b: hot set not pre-installed from its RDMA copy: %+v", v.Report)
	}
	// b was restored again and is now hotter than c (published, never
	// restored) by more than the promotion margin: it comes back into CXL
	// in the background, and c makes room for it.
	deadline := time.Now().Add(30 * time.Second)
	for tiers = s.poolLS(t, ctx); tiers["b"] != "cxl" || tiers["c"] != "rdma"; tiers = s.poolLS(t, ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("b was not promoted back in place of c: %v", tiers)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, name := range []string{"a", "b"} {
		if v := s.restore1(t, ctx, f, name+"2", name); v.Report.HotSource != "cxl" {
			t.Fatalf("%s: %+v", name, v.Report)
		}
	}
	// c, restored once now, is not hotter than a and b by the margin: it
	// stays on its RDMA copy.
	if v := s.restore1(t, ctx, f, "c2", "c"); !strings.HasPrefix(v.Report.HotSource, "rdma") {
		t.Fatalf("c: %+v", v.Report)
	}
	time.Sleep(time.Second)
	if tiers := s.poolLS(t, ctx); tiers["a"] != "cxl" || tiers["b"] != "cxl" || tiers["c"] != "rdma" {
		t.Fatalf("after c's restore: %v, want a and b in CXL", tiers)
	}
}

// TestLearnedColdPagesKept: a daemon learns the cold pages a snapshot's
// VMs fault on and installs them before the next VM of it resumes; a
// restarted daemon starts from what it kept in its state directory.
func TestLearnedColdPagesKept(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	s := startPool(t, ctx, dir)
	s.publish(t, ctx, img, "fn")
	first := s.restore1(t, ctx, f, "l1", "fn")
	if first.Report.ColdFaults == 0 || first.Report.LearnedPages != 0 || first.Report.LearnedNew == 0 {
		t.Fatalf("first restore: %+v; want cold faults, nothing learned yet, pages taught", first.Report)
	}
	second := s.restore1(t, ctx, f, "l2", "fn")
	if second.Report.LearnedPages == 0 || second.Report.ColdFaults >= first.Report.ColdFaults {
		t.Fatalf("second restore: %+v; want learned pages installed and fewer cold faults than the first's %d", second.Report, first.Report.ColdFaults)
	}
	if kept, _ := filepath.Glob(filepath.Join(dir, "vms.state", "learned", "*")); len(kept) != 1 {
		t.Fatalf("learned files %v, want one", kept)
	}
	s.kill()
	s = startPool(t, ctx, dir)
	third := s.restore1(t, ctx, f, "l3", "fn")
	if third.Report.LearnedPages == 0 || third.Report.ColdFaults >= first.Report.ColdFaults {
		t.Fatalf("after a restart: %+v; want the kept pages installed ahead", third.Report)
	}
	t.Logf("cold faults %d, %d, after a restart %d; learned pages installed ahead %d, %d",
		first.Report.ColdFaults, second.Report.ColdFaults, third.Report.ColdFaults, second.Report.LearnedPages, third.Report.LearnedPages)
}
