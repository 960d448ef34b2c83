package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
)

// freePort returns a loopback address nobody listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startEtcd runs `aquifer etcd` as its own process and returns its client
// endpoint (https://: it serves mutual TLS only; daemons get
// --etcd-tls-dir DIR/tls) and the process.
func startEtcd(t *testing.T, ctx context.Context, dir string) (string, *exec.Cmd) {
	t.Helper()
	return startEtcdAt(t, ctx, dir, freePort(t), freePort(t))
}

// startEtcdAt is startEtcd on given client and peer addresses (to restart
// a member where its clients look for it).
func startEtcdAt(t *testing.T, ctx context.Context, dir, client, peer string) (string, *exec.Cmd) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, "etcd", "--data-dir", dir, "--client-addr", client, "--peer-addr", peer)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "serving clients") {
		if time.Now().After(deadline) {
			t.Fatalf("aquifer etcd did not start: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "https://" + client, cmd
}

// TestControlPlaneDown runs a daemon on an external etcd, then kills etcd:
// every API call that needs the control plane answers 503 within its
// deadline (never hangs), and the guest emulator acting as orchestrator
// exits with the error. Bad input is 400 whether or not etcd is up.
func TestControlPlaneDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	ep, etcd := startEtcd(t, ctx, filepath.Join(dir, "etcd"))
	s := startPool(t, ctx, dir, "--etcd-endpoints", ep, "--etcd-tls-dir", filepath.Join(dir, "etcd", "tls"))

	// Not an image, a truncated image, a missing file: 400.
	notImage := filepath.Join(dir, "not-an-image")
	os.WriteFile(notImage, bytes.Repeat([]byte("x"), 8192), 0o644)
	b, _ := os.ReadFile(img)
	truncated := filepath.Join(dir, "truncated")
	os.WriteFile(truncated, b[:len(b)/2], 0o644)
	for _, p := range []string{notImage, truncated, filepath.Join(dir, "missing")} {
		if _, err := s.pc.Publish(ctx, p, "bad"); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "400") {
			t.Fatalf("publish %s: %v, want 400", filepath.Base(p), err)
		}
	}
	out, err := exec.CommandContext(ctx, bin, "publish", notImage, "--name", "bad", "--api", s.api).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not a valid Aquifer image") {
		t.Fatalf("aquifer publish of a non-image: %v: %s", err, out)
	}
	s.publish(t, ctx, img, "fn")

	etcd.Process.Kill()
	etcd.Wait()
	calls := map[string]func() error{
		"PUT /v1/vms":          func() error { _, err := s.pc.Prepare(ctx, "vm1", api.PrepareRequest{Snapshot: "fn"}); return err },
		"GET /v1/snapshots":    func() error { _, err := s.pc.Snapshots(ctx); return err },
		"POST /v1/snapshots":   func() error { _, err := s.pc.Publish(ctx, img, "fn2"); return err },
		"DELETE /v1/snapshots": func() error { return s.pc.RemoveSnapshot(ctx, "fn") },
	}
	for name, call := range calls {
		t0 := time.Now()
		err := call()
		el := time.Since(t0)
		if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "503") {
			t.Errorf("%s with etcd down: %v (after %v), want 503", name, err, el)
		}
		if el > 20*time.Second {
			t.Errorf("%s took %v with etcd down", name, el)
		}
		t.Logf("%s: %v in %v", name, err, el.Round(time.Millisecond))
	}
	t0 := time.Now()
	g := exec.CommandContext(ctx, bin, "guest", "run", "--mem", f.mem, "--trace", f.trace, "--pager-api", s.api, "--vm", "vm2", "--snapshot", "fn")
	if out, err := g.CombinedOutput(); err == nil || !strings.Contains(string(out), "unavailable") {
		t.Errorf("guest run with etcd down: %v: %s", err, out)
	}
	if el := time.Since(t0); el > 30*time.Second {
		t.Errorf("guest run took %v with etcd down", el)
	}
	fmt.Fprintln(os.Stderr) // keep the daemon's warnings apart from the test output
}
