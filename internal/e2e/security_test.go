package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/internal/testsnap"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestControlPlaneClosedToOtherUsers runs `aquifer serve --embedded` and,
// as an unprivileged local user (nobody), tries every TCP port the daemon
// listens on — enumerated from /proc — as an etcd client (gRPC plain and
// TLS without a certificate, and etcd's JSON gateway), reading and writing
// keys; then the daemon's key files, pod secret and API socket. Nothing
// works. The same probe with the cluster's client certificate reads the
// keys (positive control: the probe detects access where there is some).
func TestControlPlaneClosedToOtherUsers(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	// The data directory is the daemon's (0700) but the probe may look:
	// let other users traverse the test's directories.
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	s := startPool(t, ctx, dir, "--cxl-size", "64MiB", "--cxl-chunk", "16MiB")
	if _, err := s.pc.Snapshots(ctx); err != nil {
		t.Fatal(err)
	}
	addrs := listeningPorts(t, s.cmd.Process.Pid)
	t.Logf("serve --embedded (pid %d) listens on %v", s.cmd.Process.Pid, addrs)
	data := filepath.Join(dir, "d")
	tlsDir := filepath.Join(data, "tls")
	spec := probeSpec{Addrs: addrs, API: s.api, Files: []string{filepath.Join(tlsDir, "client.key"), filepath.Join(tlsDir, "ca.key"),
		filepath.Join(tlsDir, "member-aquifer.key"), filepath.Join(data, "pod.secret")}}
	js, _ := json.Marshal(spec)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	probe := asUser(ctx, false, shared(t, self)[0])
	probe.Env = append(os.Environ(), probeEnv+"="+string(js))
	out, err := probe.Output()
	if err != nil {
		t.Fatalf("probe as uid %d: %v: %s", nobody, err, out)
	}
	var got []attempt
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("probe output %q: %v", out, err)
	}
	if len(got) < 6*len(addrs) {
		t.Fatalf("the probe made %d attempts on %d ports", len(got), len(addrs))
	}
	for _, a := range got {
		if a.OK {
			t.Errorf("uid %d succeeded: %s on %s: %s", nobody, a.How, a.Target, a.Detail)
		} else {
			t.Logf("refused: %s on %s: %.120s", a.How, a.Target, a.Detail)
		}
	}
	cli, etcdAddr := etcdOf(t, addrs, tlsDir)
	t.Logf("etcd member at %s", etcdAddr)
	if r, err := cli.Get(ctx, "/aquifer/probe"); err != nil || len(r.Kvs) != 0 {
		t.Fatalf("the probe's key: %v %v", r, err)
	}
	// Positive control, as root with the cluster's client certificate.
	ok := false
	for _, a := range runProbe(probeSpec{Addrs: []string{etcdAddr}}, etcdCreds(t, tlsDir)) {
		ok = ok || a.OK
		t.Logf("with the cluster's certificate: %s on %s: ok=%v %s", a.How, a.Target, a.OK, a.Detail)
	}
	if !ok {
		t.Fatal("the probe cannot reach etcd even with the cluster's certificate: it would prove nothing")
	}
	cli.Delete(ctx, "/aquifer/probe")
}

// TestCatalogForgeryRefused publishes two different snapshots and rewrites
// the first one's catalog entry through etcd directly, as root with the
// cluster's client certificate: the second's entry under the first's name
// (the swap that once served one VM another's memory), a field changed
// under the old seal, the seal removed (an entry from before seals). Each
// time the next restore of that snapshot fails with a clear error (before
// and after a daemon restart), listing fails naming it, the untouched
// snapshot keeps restoring, and the operator's fix — remove, republish —
// works.
func TestCatalogForgeryRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	// A second, different image from another memory file (with the first
	// one's recording: any hot set will do).
	mem2 := filepath.Join(f.dir, "mem2")
	if _, err := testsnap.Write(mem2, testsnap.Spec{Size: poolMemSize, ZeroFrac: 0.6, Seed: 99}); err != nil {
		t.Fatal(err)
	}
	img2 := filepath.Join(f.dir, "img2")
	if out, err := exec.CommandContext(ctx, bin, "convert", "--mem", mem2, "--ws", filepath.Join(f.dir, "rec.ws"), "--out", img2, "--allow-foreign-ws").CombinedOutput(); err != nil {
		t.Fatalf("convert: %v\n%s", err, out)
	}
	dir := t.TempDir()
	s := startPool(t, ctx, dir)
	s.publish(t, ctx, img, "helloworld")
	s.publish(t, ctx, img2, "pyaes")
	s.restore1(t, ctx, f, "ok0", "helloworld")
	cli, _ := etcdOf(t, listeningPorts(t, s.cmd.Process.Pid), filepath.Join(dir, "d", "tls"))
	get := func(name string) []byte {
		r, err := cli.Get(ctx, "/aquifer/snap/"+name)
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("entry %s: %v %v", name, r, err)
		}
		return r.Kvs[0].Value
	}
	put := func(name string, v []byte) {
		if _, err := cli.Put(ctx, "/aquifer/snap/"+name, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	orig, other := get("helloworld"), get("pyaes")
	edit := func(v []byte, fn func(map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(v, &m); err != nil {
			t.Fatal(err)
		}
		fn(m)
		b, _ := json.Marshal(m)
		return b
	}
	refused := func(how, want string) {
		t.Helper()
		_, err := s.pc.Prepare(ctx, fmt.Sprintf("vm-%d", time.Now().UnixNano()), api.PrepareRequest{Snapshot: "helloworld"})
		if err == nil || !strings.Contains(err.Error(), "failed authentication") || !strings.Contains(err.Error(), want) ||
			!strings.Contains(err.Error(), "republish") {
			t.Fatalf("%s: restore of helloworld: %v", how, err)
		}
		t.Logf("%s: PUT /v1/vms refused: %v", how, err)
		out, lerr := exec.CommandContext(ctx, bin, "pool", "ls", "--api", s.api).CombinedOutput()
		if lerr == nil || !strings.Contains(string(out), `"helloworld"`) || !strings.Contains(string(out), "failed authentication") {
			t.Fatalf("%s: pool ls: %v: %s", how, lerr, out)
		}
		// A guest (the orchestrator's view) is never served.
		g := exec.CommandContext(ctx, bin, "guest", "run", "--mem", f.mem, "--trace", f.trace, "--pager-api", s.api,
			"--vm", fmt.Sprintf("g-%d", time.Now().UnixNano()), "--snapshot", "helloworld")
		if gout, err := g.CombinedOutput(); err == nil || !strings.Contains(string(gout), "failed authentication") {
			t.Fatalf("%s: guest run: %v: %s", how, err, gout)
		}
		// The untouched snapshot still restores.
		s.restore1(t, ctx, &fixture{dir: f.dir, mem: mem2, trace: f.trace}, fmt.Sprintf("b-%d", time.Now().UnixNano()), "pyaes")
	}

	// A pod's CXL placement is sealed too; one that does not verify is
	// not used: the hot set comes from the RDMA copy, still exact.
	pr, err := cli.Get(ctx, "/aquifer/pods/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var plKey string
	var plVal []byte
	for _, kv := range pr.Kvs {
		if strings.HasSuffix(string(kv.Key), "/hot/helloworld") {
			plKey, plVal = string(kv.Key), kv.Value
		}
	}
	if plKey == "" {
		t.Fatal("no CXL placement of helloworld in the pod's catalog")
	}
	if _, err := cli.Put(ctx, plKey, string(edit(plVal, func(m map[string]any) {
		e := m["extents"].([]any)[0].(map[string]any)
		e["descriptor"] = e["descriptor"].(float64) + 1
	}))); err != nil {
		t.Fatal(err)
	}
	if v := s.restore1(t, ctx, f, fmt.Sprintf("pl-%d", time.Now().UnixNano()), "helloworld"); !strings.HasPrefix(v.Report.HotSource, "rdma") {
		t.Fatalf("restore with a forged CXL placement: hot from %q, want rdma", v.Report.HotSource)
	}
	put("helloworld", other) // pyaes's entry under helloworld's name
	refused("swapped entry", "does not match")
	// The original attack needed a daemon restart (a clean one: the CXL
	// lease is released, so the next daemon need not wait it out).
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
	s = startPool(t, ctx, dir)
	cli, _ = etcdOf(t, listeningPorts(t, s.cmd.Process.Pid), filepath.Join(dir, "d", "tls")) // the member's new port
	refused("swapped entry after a restart", "does not match")

	put("helloworld", edit(orig, func(m map[string]any) {
		m["segments"].([]any)[0].(map[string]any)["nodes"] = []any{"127.0.0.1:1"}
	}))
	refused("segment placement changed", "does not match")
	put("helloworld", edit(orig, func(m map[string]any) { m["hot_bytes"] = 4096.0 }))
	refused("size changed", "does not match")
	put("helloworld", edit(orig, func(m map[string]any) { delete(m, "seal") }))
	refused("entry without a seal", "no seal")

	// The untampered entry restores again: the refusal was the content's.
	put("helloworld", orig)
	if v := s.restore1(t, ctx, f, "ok1", "helloworld"); v.Report.PreinstallPages == 0 {
		t.Fatalf("restored entry: %+v", v.Report)
	}
	// The operator's fix for a forged entry: remove it, republish.
	put("helloworld", other)
	if out, err := exec.CommandContext(ctx, bin, "pool", "rm", "helloworld", "--api", s.api).CombinedOutput(); err != nil {
		t.Fatalf("pool rm of a forged entry: %v: %s", err, out)
	}
	s.publish(t, ctx, img, "helloworld")
	s.restore1(t, ctx, f, "ok2", "helloworld")
	if tiers := s.poolLS(t, ctx); len(tiers) != 2 {
		t.Fatalf("pool ls after the fix: %v", tiers)
	}
}

// TestReregisterAfterEtcdRestart runs a daemon on an external `aquifer etcd`
// with 2 s leases, kills etcd for longer than that and starts it again on
// the same data and address: the host's and the memory nodes'
// registrations come back by themselves under new leases (counted in
// aquifer_control_reregistrations_total), and the pod publishes and
// restores again.
func TestReregisterAfterEtcdRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	etcdDir := filepath.Join(dir, "etcd")
	caddr, paddr := freePort(t), freePort(t)
	ep, etcd := startEtcdAt(t, ctx, etcdDir, caddr, paddr)
	tlsDir := filepath.Join(etcdDir, "tls")
	s := startPool(t, ctx, dir, "--etcd-endpoints", ep, "--etcd-tls-dir", tlsDir, "--lease-ttl", "2")
	s.publish(t, ctx, img, "fn")
	var cli *clientv3.Client
	leases := func() map[string]int64 {
		if cli == nil {
			cli, _ = etcdOf(t, []string{caddr}, tlsDir)
		}
		r, err := cli.Get(ctx, "/aquifer/", clientv3.WithPrefix())
		if err != nil {
			return nil
		}
		out := map[string]int64{}
		for _, kv := range r.Kvs {
			k := string(kv.Key)
			if strings.HasPrefix(k, "/aquifer/host/") || strings.HasPrefix(k, "/aquifer/memnode/") {
				out[k] = kv.Lease
			}
		}
		return out
	}
	before := leases()
	if len(before) != 4 {
		t.Fatalf("registrations before the outage: %v, want a host and 3 memory nodes", before)
	}

	etcd.Process.Kill()
	etcd.Wait()
	cli.Close()
	cli = nil
	time.Sleep(5 * time.Second) // past the 2 s leases
	startEtcdAt(t, ctx, etcdDir, caddr, paddr)
	// Every registration comes back: re-created under a new lease when the
	// client gave up on its old one during the outage (each counted), or
	// kept under its old one if that lease survived the restart (etcd
	// restores leases with a fresh TTL, and a keepalive that reconnects in
	// time keeps it).
	deadline := time.Now().Add(30 * time.Second)
	for {
		after := leases()
		renewed := map[string]int{}
		for k, l := range after {
			if old, ok := before[k]; ok && old != l {
				renewed[strings.Split(k, "/")[2]]++
			}
		}
		if len(after) == 4 && renewed["host"] >= 1 {
			t.Logf("registrations after the outage: %v → %v (renewed %v)", before, after, renewed)
			// Each re-creation is counted (just after its key is written).
			for cdl := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				m, err := s.pc.Metrics(ctx)
				if err != nil {
					t.Fatal(err)
				}
				h, n := metric(t, m, `aquifer_control_reregistrations_total{kind="host"}`), metric(t, m, `aquifer_control_reregistrations_total{kind="memnode"}`)
				if int(h) == renewed["host"] && int(n) == renewed["memnode"] {
					break
				}
				if time.Now().After(cdl) {
					t.Fatalf("aquifer_control_reregistrations_total host %v memnode %v, want %v", h, n, renewed)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			m, _ := s.pc.Metrics(ctx)
			t.Fatalf("registrations after etcd came back: %v (before %v); daemon: %s", after, before,
				grepMetrics(m, "aquifer_control_reregistrations_total"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Still registered after several more leases.
	time.Sleep(3 * time.Second)
	if l := leases(); len(l) != 4 {
		t.Fatalf("registrations did not stay: %v", l)
	}
	// The host's pod membership either survived the outage (etcd restores
	// leases with a fresh TTL, and a keepalive that reconnects in time keeps
	// it) or was lost, fenced and rejoined by itself; either way the next
	// publish places its hot set in CXL again.
	fresh := ""
	for i, deadline := 0, time.Now().Add(30*time.Second); ; i++ {
		m, err := s.pc.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if metric(t, m, "aquifer_cxl_in_service") == 1 {
			name := fmt.Sprintf("fn2-%d", i)
			if out := s.publish(t, ctx, img, name); strings.Contains(out, "hot set in CXL") {
				fresh = name
				t.Logf("after the outage %s was placed in CXL (pod rejoins: %v)", name, metric(t, m, "aquifer_pod_rejoins_total"))
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no publish placed its hot set in CXL after the outage: %s", grepMetrics(m, "aquifer_cxl_in_service")+grepMetrics(m, "aquifer_pod_rejoins_total"))
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, name := range []string{"fn", fresh} {
		if v := s.restore1(t, ctx, f, "vm-"+name, name); v.Report.PreinstallPages == 0 {
			t.Fatalf("%s: %+v", name, v.Report)
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("ran out of time")
	}
}

// TestServeRefusesExposedSecrets: a key, the pod secret or a directory of
// them that other users could read or write makes `aquifer serve` refuse to
// start, naming the file and the chmod that fixes it; nothing is silently
// replaced, and after the chmod it starts.
func TestServeRefusesExposedSecrets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	s := startPool(t, ctx, dir)
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
	data := filepath.Join(dir, "d")
	cases := []struct {
		path string
		mode os.FileMode
		fix  string
	}{
		{filepath.Join(data, "tls", "client.key"), 0o640, "chmod 600 " + filepath.Join(data, "tls", "client.key")},
		{filepath.Join(data, "tls", "ca.key"), 0o604, "chmod 600 " + filepath.Join(data, "tls", "ca.key")},
		{filepath.Join(data, "pod.secret"), 0o644, "chmod 600 " + filepath.Join(data, "pod.secret")},
		{filepath.Join(data, "tls"), 0o777, "chmod go-w " + filepath.Join(data, "tls")},
		{data, 0o770, "chmod go-w " + data},
		{filepath.Join(dir, "vms"), 0o777, "chmod go-w " + filepath.Join(dir, "vms")},
	}
	for _, c := range cases {
		st, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(c.path)
		os.Chmod(c.path, c.mode)
		out, err := exec.CommandContext(ctx, bin, "serve", "--embedded", "--data-dir", data, "--cxl-path", filepath.Join(dir, "cxl"),
			"--api", filepath.Join(dir, "api.sock"), "--socket-dir", filepath.Join(dir, "vms"), "--log-level", "warn").CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.fix) {
			t.Fatalf("%s mode %04o: serve %v: %s", c.path, c.mode, err, out)
		}
		if after, _ := os.ReadFile(c.path); st.Mode().IsRegular() && string(after) != string(before) {
			t.Fatalf("%s was replaced instead of refused", c.path)
		}
		t.Logf("%s mode %04o: %s", filepath.Base(c.path), c.mode, lastLine(string(out)))
		os.Chmod(c.path, st.Mode().Perm())
	}
	s = startPool(t, ctx, dir)
	if _, err := s.pc.Snapshots(ctx); err != nil {
		t.Fatalf("after the chmods: %v", err)
	}
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// TestDamagedSuperblock flips one byte of the CXL region's superblock. The
// running daemon notices it at its next sweep and takes its CXL tier out
// of service: restores pre-install the hot set from its RDMA copy, every
// byte verified. A daemon started on the damaged region starts (it once
// refused to: "region is not formatted"), restores the same way, and
// publishes (the RDMA tier only).
func TestDamagedSuperblock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	s := startPool(t, ctx, dir)
	s.publish(t, ctx, img, "fn")
	if v := s.restore1(t, ctx, f, "vm0", "fn"); v.Report.HotSource != "cxl" {
		t.Fatalf("before the damage: hot set from %q, want cxl", v.Report.HotSource)
	}
	region, err := os.OpenFile(filepath.Join(dir, "cxl"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := region.ReadAt(b, 24); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := region.WriteAt(b, 24); err != nil {
		t.Fatal(err)
	}
	region.Close()
	start := time.Now()
	for i := 0; ; i++ {
		v := s.restore1(t, ctx, f, fmt.Sprintf("run-%d", i), "fn")
		if strings.HasPrefix(v.Report.HotSource, "rdma") {
			t.Logf("the running daemon read the hot set from %s %v after the flip (restore %d)", v.Report.HotSource, time.Since(start).Round(time.Millisecond), i)
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("30 s after the flip the running daemon still reads the hot set from %q", v.Report.HotSource)
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
	s = startPool(t, ctx, dir)
	if v := s.restore1(t, ctx, f, "after", "fn"); !strings.HasPrefix(v.Report.HotSource, "rdma") || v.Report.PreinstallPages == 0 {
		t.Fatalf("a daemon started on the damaged region: %+v", v.Report)
	}
	s.publish(t, ctx, img, "fn2")
	s.restore1(t, ctx, f, "after2", "fn2")
}
