package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/baseline"
	"github.com/aquifer-pool/aquifer/wset"
)

// record serves the first quarter of the fixture's trace with `aquifer
// handle --record` and returns the recording's path.
func record(t *testing.T, ctx context.Context, f *fixture) string {
	t.Helper()
	rec := filepath.Join(f.dir, "rec.ws")
	if _, err := os.Stat(rec); err == nil {
		return rec
	}
	sock := filepath.Join(f.dir, "rec.sock")
	h := exec.CommandContext(ctx, bin, "handle", "--socket", sock, "--mem", f.mem, "--record", rec)
	h.Stderr = os.Stderr
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	waitSocket(t, sock)
	part := filepath.Join(f.dir, "part.ws")
	tr, _ := wset.ReadFile(f.trace)
	tr.Accesses = tr.Accesses[:len(tr.Accesses)/4]
	if err := wset.WriteFile(part, tr); err != nil {
		t.Fatal(err)
	}
	runGuest(t, ctx, "--mem", f.mem, "--trace", part, "--socket", sock)
	if err := h.Wait(); err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestBaselines restores through the REAP and FaaSnap reimplementations and
// verifies every byte, with a balloon inflation.
func TestBaselines(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rec := record(t, ctx, f)
	balloon := fmt.Sprintf("%d:%d", 64<<20, 8<<20)

	t.Run("reap", func(t *testing.T) {
		ws := filepath.Join(f.dir, "reap.ws")
		if out, err := exec.CommandContext(ctx, bin, "baseline", "reap", "--mem", f.mem, "--ws", rec, "--out", ws).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		sock := filepath.Join(f.dir, "reap.sock")
		h := exec.CommandContext(ctx, bin, "handle", "--socket", sock, "--mem", f.mem, "--reap-ws", ws)
		var hout bytes.Buffer
		h.Stdout, h.Stderr = &hout, os.Stderr
		if err := h.Start(); err != nil {
			t.Fatal(err)
		}
		waitSocket(t, sock)
		rep := runGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", sock, "--balloon", balloon)
		if err := h.Wait(); err != nil {
			t.Fatal(err)
		}
		if rep.Mismatches != 0 || rep.Verified == 0 {
			t.Fatalf("guest report %+v", rep)
		}
		m := regexp.MustCompile(`pre-installed (\d+) pages`).FindStringSubmatch(hout.String())
		if m == nil || m[1] == "0" {
			t.Fatalf("REAP installed no working set: %s", hout.String())
		}
		if d, ok := baseline.ParseWSFetch(hout.String()); !ok || d <= 0 {
			t.Fatalf("the REAP handler reported no working-set fetch time: %s", hout.String())
		}
	})

	t.Run("faasnap", func(t *testing.T) {
		dir := filepath.Join(f.dir, "faasnap")
		os.MkdirAll(dir, 0o755)
		out, err := exec.CommandContext(ctx, bin, "baseline", "faasnap", "--mem", f.mem, "--ws", rec, "--out", dir).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		rep := runGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--backend", "faasnap", "--drop-cache",
			"--faasnap-plan", filepath.Join(dir, "faasnap.json"), "--gap-start", "128MiB", "--balloon", balloon)
		if rep.Mismatches != 0 || rep.Verified == 0 || !rep.BalloonDone || rep.Regions != 2 {
			t.Fatalf("guest report %+v", rep)
		}
	})
}
