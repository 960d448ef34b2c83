package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/internal/prio"
)

// threadNices returns the nice value of every thread of process pid.
func threadNices(t *testing.T, pid int) map[int]int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		if n, err := prio.Of(tid); err == nil { // else the thread ended
			out[tid] = n
		}
	}
	return out
}

// TestPageServerNice: `aquifer serve --nice` and `aquifer handle --nice`
// run every thread at that value, those made while serving too, and still
// restore VMs byte for byte; an out-of-range value is refused before
// anything starts. A negative value needs root: the test skips without it.
func TestPageServerNice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a negative nice value needs CAP_SYS_NICE; not root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	check := func(what string, pid int) {
		t.Helper()
		for tid, n := range threadNices(t, pid) {
			if n != -4 {
				t.Fatalf("%s: thread %d at nice %d, want -4", what, tid, n)
			}
		}
	}
	apiSock := filepath.Join(dir, "api.sock")
	d := exec.CommandContext(ctx, bin, "serve", "--images", imagesDir(t, dir, img), "--api", apiSock,
		"--socket-dir", filepath.Join(dir, "vms"), "--log-level", "warn", "--nice", "-4")
	d.Stderr = os.Stderr
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { d.Process.Signal(os.Interrupt); d.Wait() }()
	waitSocket(t, apiSock)
	check("serve, started", d.Process.Pid)
	vm, err := client.New(apiSock, client.Options{}).Prepare(ctx, "vm-nice", api.PrepareRequest{Snapshot: "fn"})
	if err != nil {
		t.Fatal(err)
	}
	if rep := runGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", vm.Socket); rep.Mismatches != 0 || rep.Verified == 0 {
		t.Fatalf("restore through serve --nice: %+v", rep)
	}
	check("serve, after a restore", d.Process.Pid)

	sock := filepath.Join(dir, "h.sock")
	h := exec.CommandContext(ctx, bin, "handle", "--socket", sock, "--mem", f.mem, "--nice", "-4")
	h.Stderr = os.Stderr
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if h.ProcessState == nil {
			h.Process.Kill()
			h.Wait()
		}
	}()
	waitSocket(t, sock)
	check("handle, listening", h.Process.Pid)
	if rep := runGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", sock); rep.Mismatches != 0 || rep.Verified == 0 {
		t.Fatalf("restore through handle --nice: %+v", rep)
	}
	if err := h.Wait(); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{
		{"serve", "--images", dir, "--api", filepath.Join(dir, "x.sock"), "--nice", "-21"},
		{"handle", "--socket", filepath.Join(dir, "x2.sock"), "--mem", f.mem, "--nice", "20"},
	} {
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--nice: nice value") || !strings.Contains(string(out), "outside -20..19") {
			t.Fatalf("%s --nice out of range: %v: %s", args[0], err, out)
		}
	}
}
