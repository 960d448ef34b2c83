package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/tcp"
)

// TestMemnodeUnauthenticatedFlood floods an `aquifer memnode` with idle
// connections that never answer its admission challenge: at most
// --max-unauthenticated of them are held (the oldest closed beyond, and
// counted), each for at most --auth-timeout (then closed, and counted), and
// a pod member publishes and reads a segment, every byte checked, while the
// flood goes on.
func TestMemnodeUnauthenticatedFlood(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "pod.secret")
	secret := []byte("flood-test-pod-secret-0123456789")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	const maxUnauth = 32
	cmd := exec.CommandContext(ctx, bin, "memnode", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--capacity", "64MiB", "--slab-size", "16MiB", "--data-dir", filepath.Join(dir, "m"), "--secret-file", secretFile,
		"--max-unauthenticated", fmt.Sprint(maxUnauth), "--auth-timeout", "2s", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	re := regexp.MustCompile(`memnode listening on (\S+) \(metrics (\S+)\)`)
	sc := bufio.NewScanner(stdout)
	var addr, maddr string
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			addr, maddr = m[1], m[2]
			break
		}
	}
	if addr == "" {
		t.Fatal("memnode did not report its addresses")
	}
	go io.Copy(io.Discard, stdout)
	metrics := func() string {
		r, err := http.Get("http://" + maddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return string(b)
	}
	waitMetric := func(what string, ok func(string) bool) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			m := metrics()
			if ok(m) {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never held; metrics:\n%s", what, grepMetrics(m, "aquifer_memnode_"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	rss0 := vmRSS(cmd.Process.Pid)

	// The flood: many idle connections that never answer, held open.
	const flood = 20 * maxUnauth
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range flood {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	m := waitMetric("the cap", func(m string) bool {
		return metric(t, m, `aquifer_memnode_auth_failures_total{reason="evicted"}`) == flood-maxUnauth &&
			metric(t, m, "aquifer_memnode_unauthenticated_connections") == maxUnauth
	})
	peak := vmRSS(cmd.Process.Pid)

	// A pod member is served while the idle connections are held.
	cl, err := rdma.NewClient(rdma.Options{Transport: tcp.New(secret, "pod0"), Nodes: []rdma.NodeID{rdma.NodeID(addr)}, Replicas: 1,
		ReadTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	data := bytes.Repeat([]byte("aquifer!"), 16*4096/8)
	for i := range 16 {
		data[i*4096] = byte(i)
	}
	obj, err := cl.PublishObject(ctx, 0x1000_0000, 4096, data, 0)
	if err != nil {
		t.Fatalf("publish during the flood: %v", err)
	}
	src := &rdma.ObjectSource{C: cl, Obj: obj}
	buf, release, err := src.Arena(len(data))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if err := src.Read(ctx, 0, buf, false); err != nil || !bytes.Equal(buf, data) {
		t.Fatalf("read during the flood: %v (equal %v)", err, bytes.Equal(buf, data))
	}
	m = metrics()
	if u := metric(t, m, "aquifer_memnode_unauthenticated_connections"); u > maxUnauth {
		t.Fatalf("%v unauthenticated connections held, cap %d", u, maxUnauth)
	}
	if metric(t, m, "aquifer_memnode_connections_admitted_total") < 1 {
		t.Fatal("the pod member was not admitted")
	}
	// Every connection beyond the cap was closed by the node: the oldest.
	for _, c := range conns[:flood-maxUnauth-1] {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("an evicted connection is still open: %v", err)
		}
	}

	// The rest time out: nothing unauthenticated stays past the deadline.
	m = waitMetric("the admission deadline", func(m string) bool {
		return metric(t, m, "aquifer_memnode_unauthenticated_connections") == 0 &&
			metric(t, m, `aquifer_memnode_auth_failures_total{reason="timeout"}`) >= 1
	})
	last := conns[len(conns)-1]
	last.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, last); err != nil {
		t.Fatalf("the node did not close an idle connection after its deadline: %v", err)
	}
	t.Logf("%d idle connections opened; %v evicted at the cap of %d, %v timed out; memnode RSS %d kB before, %d kB with them open (2 cores shared with the test and other work)",
		flood, metric(t, m, `aquifer_memnode_auth_failures_total{reason="evicted"}`), maxUnauth,
		metric(t, m, `aquifer_memnode_auth_failures_total{reason="timeout"}`), rss0, peak)
}

// vmRSS returns a process's resident set in kB (0 if unknown).
func vmRSS(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	var kb int
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			fmt.Sscanf(strings.TrimPrefix(l, "VmRSS:"), "%d", &kb)
		}
	}
	return kb
}

// grepMetrics keeps the exposition lines that start with prefix.
func grepMetrics(m, prefix string) string {
	var out []string
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
