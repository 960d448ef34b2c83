package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/cluster"
)

// The cluster tests run `aquifer cluster up`: a control plane, memory
// nodes and one `aquifer serve` per host, all separate processes, the
// hosts of a pod sharing one emulated CXL region.

const clusterTTL = 3 // seconds: hosts silent this long are fenced

type testCluster struct {
	dir string
	s   *cluster.State
}

func clusterUp(t *testing.T, ctx context.Context, hosts int, args ...string) *testCluster {
	t.Helper()
	dir := t.TempDir()
	a := append([]string{"cluster", "up", "--pods", "1", "--hosts-per-pod", fmt.Sprint(hosts), "--memnodes", "3", "--dir", dir,
		"--lease-ttl", fmt.Sprint(clusterTTL), "--memnode-capacity", "1GiB", "--readers", "2"}, args...)
	out, err := exec.CommandContext(ctx, bin, a...).CombinedOutput()
	if err != nil {
		t.Fatalf("cluster up: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(bin, "cluster", "down", "--dir", dir, "--grace", "3s").CombinedOutput(); err != nil {
			t.Errorf("cluster down: %v\n%s", err, out)
		}
	})
	s, err := cluster.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := filepath.Join(dir, "pod1", "host1", "api.sock"); s.Pods[0].Hosts[0].API != got {
		t.Fatalf("host1 API %s, want %s", s.Pods[0].Hosts[0].API, got)
	}
	return &testCluster{dir: dir, s: s}
}

func (c *testCluster) host(j int) *cluster.Host { return c.s.Pods[0].Hosts[j-1] }

func (c *testCluster) client(j int) *client.Client {
	return client.New(c.host(j).API, client.Options{})
}

// fullestMemNode is the index in st of the live memory node that holds the
// most segments; it fails the test when no live node holds one.
func fullestMemNode(t *testing.T, st *cluster.Status) int {
	t.Helper()
	best := -1
	for i, m := range st.MemNodes {
		if m.Alive && (best < 0 || m.Segments > st.MemNodes[best].Segments) {
			best = i
		}
	}
	if best < 0 || st.MemNodes[best].Segments == 0 {
		t.Fatalf("no live memory node holds a segment: %+v", st.MemNodes)
	}
	return best
}

func (c *testCluster) status(t *testing.T, ctx context.Context) *cluster.Status {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, "cluster", "status", "--dir", c.dir, "--json").Output()
	if err != nil {
		t.Fatalf("cluster status: %v", err)
	}
	var st cluster.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("cluster status --json: %v\n%s", err, out)
	}
	return &st
}

func (c *testCluster) publish(t *testing.T, ctx context.Context, j int, img, name string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, "publish", img, "--name", name, "--api", c.host(j).API).CombinedOutput()
	if err != nil {
		t.Fatalf("publish %s on host%d: %v\n%s", name, j, err, out)
	}
	return string(out)
}

// restore runs the guest emulator through host j's daemon and returns the
// daemon's report.
func (c *testCluster) restore(ctx context.Context, f *fixture, j int, vm, snap string) (*api.VM, error) {
	ps := &poolServer{api: c.host(j).API, pc: c.client(j)}
	return ps.restore(ctx, f, vm, snap)
}

// double prepares vm on host j and runs the independent Firecracker double
// against its socket.
func (c *testCluster) double(t *testing.T, ctx context.Context, f *fixture, j int, vm, snap, dialect string) {
	t.Helper()
	v, err := c.client(j).Prepare(ctx, vm, api.PrepareRequest{Snapshot: snap})
	if err != nil {
		t.Fatalf("PUT /v1/vms/%s on host%d: %v", vm, j, err)
	}
	r := runFCDouble(t, ctx, v.Socket, f.mem, dialect)
	if r.Err != "" || r.Mismatches != 0 || r.Pages != poolMemSize/4096 {
		t.Fatalf("host%d %s (dialect %s): double read %d pages, %d mismatching (first %d): %s", j, snap, dialect, r.Pages, r.Mismatches, r.First, r.Err)
	}
}

func signalHost(t *testing.T, h *cluster.Host, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(h.PID, sig); err != nil {
		t.Fatalf("signal %v to %s: %v", sig, h.Name, err)
	}
}

// TestClusterPod is the pod of many hosts end to end: three daemons share
// one CXL region; each publishes; every host restores every snapshot from
// the shared region (concurrently, every byte verified); an independent
// Firecracker double reads exactly the memory file through host 3; host 1
// is killed and the same works on host 2; after the lease TTL host 1's
// chunk is reclaimed and reused.
func TestClusterPod(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	// Five 4 MiB chunks, one hot set (about 2.4 MiB) each.
	c := clusterUp(t, ctx, 3, "--cxl-size", "24MiB", "--cxl-chunk", "4MiB")
	st := c.status(t, ctx)
	if len(st.Pods) != 1 || len(st.Pods[0].Hosts) != 3 || len(st.MemNodes) != 3 {
		t.Fatalf("status: %+v", st)
	}
	for _, h := range st.Pods[0].Hosts {
		if !h.Alive || !h.Member || len(h.Slots) != 3 || h.PID == 0 || h.API == "" {
			t.Fatalf("host %+v: want alive, a member with 3 slots", h)
		}
	}
	for j := 1; j <= 3; j++ {
		if out := c.publish(t, ctx, j, img, fmt.Sprint("fn", j)); !strings.Contains(out, "hot set in CXL") {
			t.Fatalf("host%d publish: %s", j, out)
		}
	}
	st = c.status(t, ctx)
	owners := map[string]bool{}
	for _, h := range st.Pods[0].ChunkOwners {
		owners[h] = true
	}
	if len(owners) != 3 {
		t.Fatalf("chunk owners %v: every host should own the chunk it published into", st.Pods[0].ChunkOwners)
	}
	// Every host restores every snapshot, all at once.
	var wg sync.WaitGroup
	errs := make(chan error, 9)
	for j := 1; j <= 3; j++ {
		for k := 1; k <= 3; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.restore(ctx, f, j, fmt.Sprintf("r%d-%d", j, k), fmt.Sprint("fn", k))
				if err == nil && (v.Report.HotSource != "cxl" || v.Report.PreinstallPages == 0) {
					err = fmt.Errorf("host%d fn%d: hot set not pre-installed from CXL: %+v", j, k, v.Report)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	c.double(t, ctx, f, 3, "d1", "fn1", "1.10")

	signalHost(t, c.host(1), syscall.SIGKILL)
	c.double(t, ctx, f, 2, "d2", "fn1", "1.12")
	if v, err := c.restore(ctx, f, 2, "after-kill", "fn1"); err != nil || v.Report.HotSource != "cxl" {
		t.Fatalf("fn1 after its publisher died: %v %+v", err, v)
	}
	// After the TTL host 1 is gone from the slot table and its chunk has
	// no owner; publishing on fills the region until it is reused.
	deadline := time.Now().Add(time.Duration(3*clusterTTL) * time.Second)
	for {
		st = c.status(t, ctx)
		h1 := st.Pods[0].Hosts[0]
		if !h1.Alive && !h1.Member && !strings.Contains(fmt.Sprint(st.Pods[0].ChunkOwners), "host1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host1 not fenced after %ds: %+v %v", 3*clusterTTL, h1, st.Pods[0].ChunkOwners)
		}
		time.Sleep(200 * time.Millisecond)
	}
	before := len(st.Pods[0].ChunkOwners)
	for i := 4; i <= 7; i++ {
		c.publish(t, ctx, 2, img, fmt.Sprint("fn", i))
	}
	st = c.status(t, ctx)
	if n := len(st.Pods[0].ChunkOwners); n != 5 || before != 2 {
		t.Fatalf("chunk owners before %d after %d (%v): host1's chunk should be reused", before, n, st.Pods[0].ChunkOwners)
	}
	for i := 1; i <= 7; i++ {
		if _, err := c.restore(ctx, f, 3, fmt.Sprint("final", i), fmt.Sprint("fn", i)); err != nil {
			t.Error(err)
		}
	}
	used := 0
	for _, m := range st.MemNodes {
		if !m.Alive || m.CapacityBytes != 1<<30 || m.PID == 0 || m.Addr == "" {
			t.Errorf("memnode %+v", m)
		}
		if m.UsedBytes > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("segments on %d memory nodes, want at least the 2 replicas: %+v", used, st.MemNodes)
	}
}

// TestClusterKillWhilePublishing SIGKILLs a host while it publishes and
// replaces snapshots (retiring and reusing its extents) and while another
// host restores them: no restore sees a wrong or partial page.
func TestClusterKillWhilePublishing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	c := clusterUp(t, ctx, 2, "--cxl-size", "24MiB", "--cxl-chunk", "4MiB")
	c.publish(t, ctx, 1, img, "v0")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var restores, fallbacks int
	wg.Add(1)
	go func() { // host 1: publish v_i, remove v_{i-1}, until killed
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cmd := exec.CommandContext(ctx, bin, "publish", img, "--name", fmt.Sprint("v", i), "--api", c.host(1).API)
			if cmd.Run() != nil {
				return
			}
			c.client(1).RemoveSnapshot(ctx, fmt.Sprint("v", i-2))
		}
	}()
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() { // host 2: restore whatever host 1 published last
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				snaps, err := c.client(2).Snapshots(ctx)
				if err != nil || len(snaps) == 0 {
					continue
				}
				v, err := c.restore(ctx, f, 2, fmt.Sprintf("k%d-%d", r, i), snaps[len(snaps)-1].Name)
				if err != nil && !strings.Contains(err.Error(), "not found") {
					t.Errorf("restore during publishing: %v", err)
					continue
				}
				if err == nil {
					mu.Lock()
					restores++
					if v.Report.HotSource != "cxl" {
						fallbacks++
					}
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(3 * time.Second)
	signalHost(t, c.host(1), syscall.SIGKILL)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d verified restores while host1 published and died (%d of them from the RDMA copy)", restores, fallbacks)
	if restores == 0 {
		t.Fatal("no restore completed")
	}
	// After the TTL host 2 takes host 1's chunks over and every snapshot
	// still restores, byte for byte.
	time.Sleep(time.Duration(clusterTTL+1) * time.Second)
	c.publish(t, ctx, 2, img, "after")
	snaps, err := c.client(2).Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range snaps {
		if _, err := c.restore(ctx, f, 2, fmt.Sprint("post", i), s.Name); err != nil {
			t.Errorf("%s after host1's death: %v", s.Name, err)
		}
	}
}

// TestClusterStopFence SIGSTOPs a host until its lease expires, lets
// another host take its chunks over, then SIGCONTs it: it notices it is
// fenced, drops its identities, rejoins as a new member (new slots), and
// every restore on every host verifies.
func TestClusterStopFence(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	c := clusterUp(t, ctx, 2, "--cxl-size", "24MiB", "--cxl-chunk", "4MiB")
	c.publish(t, ctx, 1, img, "a")
	c.publish(t, ctx, 2, img, "b")
	st := c.status(t, ctx)
	slotsBefore := fmt.Sprint(st.Pods[0].Hosts[0].Slots)
	// Stop host 1 in the middle of a publish.
	pub := exec.CommandContext(ctx, bin, "publish", img, "--name", "late", "--api", c.host(1).API)
	var pubOut bytes.Buffer
	pub.Stdout, pub.Stderr = &pubOut, &pubOut
	if err := pub.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	signalHost(t, c.host(1), syscall.SIGSTOP)
	time.Sleep(time.Duration(clusterTTL+2) * time.Second)
	// Host 2 fills the region meanwhile, taking host 1's chunks over.
	for i := 0; i < 4; i++ {
		c.publish(t, ctx, 2, img, fmt.Sprint("c", i))
	}
	if _, err := c.restore(ctx, f, 2, "during-stop", "a"); err != nil {
		t.Fatal(err)
	}
	signalHost(t, c.host(1), syscall.SIGCONT)
	pub.Wait()
	t.Logf("publish interrupted by SIGSTOP: %s", strings.TrimSpace(pubOut.String()))
	// Host 1 rejoins as a new member.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st = c.status(t, ctx)
		h1 := st.Pods[0].Hosts[0]
		if h1.Alive && h1.Member && fmt.Sprint(h1.Slots) != slotsBefore {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host1 did not rejoin with new slots: %+v (before %s)", h1, slotsBefore)
		}
		time.Sleep(200 * time.Millisecond)
	}
	log, _ := os.ReadFile(c.host(1).Log)
	if !strings.Contains(string(log), "lease was lost") {
		t.Errorf("host1's log does not say it was fenced:\n%s", log)
	}
	snaps, err := c.client(1).Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range snaps {
		for j := 1; j <= 2; j++ {
			if _, err := c.restore(ctx, f, j, fmt.Sprintf("post%d-%d", i, j), s.Name); err != nil {
				t.Errorf("%s on host%d: %v", s.Name, j, err)
			}
		}
	}
	if out := c.publish(t, ctx, 1, img, "rejoined"); !strings.Contains(out, "in CXL") && !strings.Contains(out, "RDMA") {
		t.Fatalf("publish after rejoin: %s", out)
	}
}

// TestRegionOfAnotherPod: a daemon pointed at a region that belongs to
// another pod, or to the same pod name under another control plane, exits
// non-zero at once naming the owner.
func TestRegionOfAnotherPod(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := clusterUp(t, ctx, 1, "--cxl-size", "24MiB", "--cxl-chunk", "4MiB")
	region := c.s.Pods[0].CXL
	for _, pod := range []string{"other", "pod1"} {
		dir := t.TempDir()
		t0 := time.Now()
		out, err := exec.CommandContext(ctx, bin, "serve", "--embedded", "--pod", pod, "--cxl", region, "--data-dir", filepath.Join(dir, "d"),
			"--api", filepath.Join(dir, "api.sock")).CombinedOutput()
		el := time.Since(t0)
		if err == nil || !strings.Contains(string(out), `belongs to pod "pod1"`) {
			t.Fatalf("serve --pod %s on pod1's region: %v: %s", pod, err, out)
		}
		if el > 2*time.Second {
			t.Errorf("refusal took %v", el)
		}
		t.Logf("--pod %s refused in %v: %s", pod, el.Round(time.Millisecond), strings.TrimSpace(string(out)))
	}
}

// TestClusterOfPods: a snapshot published in pod1 restores in pod2 — its
// first restore there pre-installs the hot set from the RDMA copy, pod2
// then promotes it into its own region, and the next restore in pod2 reads
// CXL; an independent Firecracker double restoring through pod2 reads
// exactly the memory file; `pool rm` returns every memory node's used
// bytes to where they were before the publish.
func TestClusterOfPods(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	out, err := exec.CommandContext(ctx, bin, "cluster", "up", "--pods", "2", "--hosts-per-pod", "2", "--memnodes", "3", "--dir", dir,
		"--lease-ttl", fmt.Sprint(clusterTTL), "--memnode-capacity", "1GiB", "--readers", "2", "--cxl-size", "24MiB", "--cxl-chunk", "4MiB").CombinedOutput()
	if err != nil {
		t.Fatalf("cluster up: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command(bin, "cluster", "down", "--dir", dir, "--grace", "3s").Run() })
	s, err := cluster.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{dir: dir, s: s}
	host := func(pod, j int) *cluster.Host { return s.Pods[pod-1].Hosts[j-1] }
	cl := func(pod, j int) *client.Client { return client.New(host(pod, j).API, client.Options{}) }
	restore := func(pod, j int, vm string) *api.VM {
		t.Helper()
		ps := &poolServer{api: host(pod, j).API, pc: cl(pod, j)}
		v, err := ps.restore(ctx, f, vm, "fn")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	used := func() map[string]uint64 {
		st := c.status(t, ctx)
		out := map[string]uint64{}
		for _, m := range st.MemNodes {
			out[m.Addr] = m.UsedBytes
		}
		return out
	}
	before := used()
	if out, err := exec.CommandContext(ctx, bin, "publish", img, "--name", "fn", "--api", host(1, 1).API).CombinedOutput(); err != nil || !strings.Contains(string(out), "hot set in CXL") {
		t.Fatalf("publish in pod1: %v: %s", err, out)
	}
	if v := restore(2, 2, "first"); !strings.HasPrefix(v.Report.HotSource, "rdma") || v.Report.PreinstallPages == 0 {
		t.Fatalf("first restore in pod2: want the hot set pre-installed from RDMA, got %+v", v.Report)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := c.status(t, ctx)
		if len(st.Snapshots) == 1 && fmt.Sprint(st.Snapshots[0].HotIn) == "[pod1 pod2]" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod2 did not promote fn: %+v", st.Snapshots)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if v := restore(2, 1, "second"); v.Report.HotSource != "cxl" {
		t.Fatalf("second restore in pod2: want CXL, got %+v", v.Report)
	}
	c.s.Pods[0] = s.Pods[1] // the helpers below use pod index 0
	c.double(t, ctx, f, 2, "double", "fn", "1.12")
	if err := cl(2, 1).RemoveSnapshot(ctx, "fn"); err != nil {
		t.Fatal(err)
	}
	after := used()
	for addr, b := range before {
		if after[addr] != b {
			t.Errorf("memory node %s: %d bytes used before the publish, %d after pool rm", addr, b, after[addr])
		}
	}
}

// TestClusterMemNodeLoss kills memory nodes under a published snapshot:
// after the first SIGKILL the memory tier's leader copies every segment the
// dead node held to the surviving nodes (measured: the time until no
// segment names an unregistered node, against the bound lease TTL +
// --memnode-dead-after + one round + copy time); restores stay exact
// throughout; after a second SIGKILL the last copies still serve a
// byte-exact restore.
func TestClusterMemNodeLoss(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	const deadAfter = 2 * time.Second
	c := clusterUp(t, ctx, 2, "--replicas", "2", "--memnode-dead-after", deadAfter.String())
	c.publish(t, ctx, 1, img, "fn")
	snap := func() cluster.SnapshotStatus {
		t.Helper()
		st := c.status(t, ctx)
		if len(st.Snapshots) != 1 {
			t.Fatalf("status lists %d snapshots, want 1: %+v", len(st.Snapshots), st)
		}
		return st.Snapshots[0]
	}
	if s := snap(); s.Segments == 0 || s.MinCopies != 2 || s.UnderReplicated != 0 {
		t.Fatalf("after publish: %+v, want every segment on 2 live nodes", s)
	}
	// Kill the memory node holding the most segments.
	victim := func() *cluster.MemNode {
		t.Helper()
		return c.s.MemNodes[fullestMemNode(t, c.status(t, ctx))]
	}
	m1 := victim()
	killed := time.Now()
	if err := syscall.Kill(m1.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if v, err := c.restore(ctx, f, 2, "during", "fn"); err != nil {
		t.Fatalf("restore right after %s died: %v", m1.Name, err)
	} else if v.Report.ColdBytesRead == 0 {
		t.Logf("note: the restore during the outage read no cold page: %+v", v.Report)
	}
	bound := time.Duration(clusterTTL)*time.Second + deadAfter + 2*time.Second /* one round */ + 20*time.Second /* copying, on a loaded machine */
	for {
		s := snap()
		if len(s.Copies[m1.Addr]) == 0 && s.UnderReplicated == 0 && s.MinCopies >= 2 {
			t.Logf("re-replicated %d segments away from %s in %v (bound %v: lease TTL %ds + dead-after %v + one 2s round + copying)",
				s.Segments, m1.Name, time.Since(killed).Round(10*time.Millisecond), bound, clusterTTL, deadAfter)
			break
		}
		if time.Since(killed) > bound {
			t.Fatalf("%v after %s died: %+v (want no under-replicated segment, 2 copies each)", time.Since(killed), m1.Name, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.double(t, ctx, f, 1, "after-repair", "fn", "1.12")
	m2 := victim()
	if err := syscall.Kill(m2.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// One copy of every segment is left, on the last node.
	if _, err := c.restore(ctx, f, 2, "last-copy", "fn"); err != nil {
		t.Fatalf("restore with one memory node left: %v", err)
	}
	c.double(t, ctx, f, 1, "last-copy-double", "fn", "1.12")
}

// TestClusterNoCopyLeft: with the only copies of the cold segments gone
// (--replicas 1, their memory node killed after the VM was prepared), the
// first cold fault must not hang the daemon: it marks the VM failed,
// naming the segment and the dead node, within a bounded time, and never
// feeds the guest a page it could not read. (The VMM's faulting vCPU stays
// blocked, as under Firecracker: the orchestrator reads the failure and
// kills the VM.)
func TestClusterNoCopyLeft(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	c := clusterUp(t, ctx, 1, "--replicas", "1", "--memnode-dead-after", "1h")
	c.publish(t, ctx, 1, img, "fn")
	st := c.status(t, ctx)
	best := -1
	for i, m := range c.s.MemNodes {
		if st.Snapshots[0].Copies[m.Addr]["cold"] > 0 {
			best = i
		}
	}
	if best < 0 {
		t.Fatalf("no memory node holds a cold segment: %+v", st.Snapshots[0].Copies)
	}
	m := c.s.MemNodes[best]
	v, err := c.client(1).Prepare(ctx, "orphaned", api.PrepareRequest{Snapshot: "fn", NoPrefetch: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(m.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	dctx, dcancel := context.WithCancel(ctx)
	done := make(chan fcDoubleResult, 1)
	go func() { r, _ := fcDoubleRun(dctx, v.Socket, f.mem, "1.12"); done <- r }()
	defer func() { dcancel(); <-done }()
	const bound = 30 * time.Second
	for {
		v, err := c.client(1).Get(ctx, "orphaned")
		if err != nil {
			t.Fatal(err)
		}
		if v.State == api.StateFailed {
			t.Logf("VM failed %v after its only cold copies died: %s", time.Since(start).Round(time.Millisecond), v.Error)
			if !strings.Contains(v.Error, m.Addr) {
				t.Errorf("the failure does not name the dead node %s: %s", m.Addr, v.Error)
			}
			break
		}
		if time.Since(start) > bound {
			t.Fatalf("VM still %s %v after the only copies of its cold pages died", v.State, bound)
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case r := <-done:
		if r.Err == "" && r.Mismatches == 0 && r.Pages == poolMemSize/4096 {
			t.Fatalf("the double read every page exactly although the cold copies are gone: %+v", r)
		}
		if r.Mismatches != 0 {
			t.Fatalf("the double was fed %d wrong pages (first %d)", r.Mismatches, r.First)
		}
		done <- r
	default:
	}
}

// TestClusterMemNodeDrain: `aquifer memnode drain ADDR` on the memory node
// holding the most segments returns once no snapshot keeps a segment there;
// every segment still has its two copies on the other nodes, the drained
// node's copies are deleted, and a restore verifies every byte.
func TestClusterMemNodeDrain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	c := clusterUp(t, ctx, 1, "--replicas", "2")
	c.publish(t, ctx, 1, img, "fn")
	st := c.status(t, ctx)
	best := fullestMemNode(t, st)
	addr := st.MemNodes[best].Addr
	dctx, dcancel := context.WithTimeout(ctx, time.Minute)
	defer dcancel()
	out, err := exec.CommandContext(dctx, bin, "memnode", "drain", addr, "--api", c.host(1).API).CombinedOutput()
	if err != nil {
		t.Fatalf("memnode drain %s: %v\n%s", addr, err, out)
	}
	st = c.status(t, ctx)
	if len(st.Snapshots) != 1 {
		t.Fatalf("status lists %d snapshots: %+v", len(st.Snapshots), st)
	}
	if s := st.Snapshots[0]; len(s.Copies[addr]) != 0 || s.MinCopies < 2 || s.UnderReplicated != 0 {
		t.Fatalf("after draining %s: %+v (want no copy there, 2 copies of every segment elsewhere)", addr, s)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		st = c.status(t, ctx)
		if st.MemNodes[best].Segments == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the drained node %s still holds %d segments", addr, st.MemNodes[best].Segments)
		}
	}
	t.Logf("drained %s: %s", addr, strings.TrimSpace(string(out)))
	if _, err := c.restore(ctx, f, 1, "after-drain", "fn"); err != nil {
		t.Fatal(err)
	}
}
