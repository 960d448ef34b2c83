package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/internal/testsnap"
	"github.com/aquifer-pool/aquifer/wset"
)

const memSize = 256 << 20

type fixture struct {
	dir, mem, trace string
	kinds           []byte
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{dir: dir, mem: filepath.Join(dir, "mem"), trace: filepath.Join(dir, "trace.ws")}
	var err error
	f.kinds, err = testsnap.Write(f.mem, testsnap.Spec{Size: memSize, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	tr := testsnap.Trace(testsnap.TraceSpec{MemSize: memSize, Accesses: 12000, Pages: 6000, WriteFrac: 0.2, CPUs: 2, Seed: 2})
	if err := wset.WriteFile(f.trace, tr); err != nil {
		t.Fatal(err)
	}
	return f
}

type guestReport struct {
	Backend     string `json:"backend"`
	Regions     int    `json:"regions"`
	VCPUs       int    `json:"vcpus"`
	Pages       int    `json:"pages"`
	Verified    int    `json:"verified_pages"`
	Mismatches  int    `json:"mismatches"`
	BalloonDone bool   `json:"balloon_done"`
}

func runGuest(t *testing.T, ctx context.Context, args ...string) guestReport {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, append([]string{"guest", "run", "--json"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("guest %v: %v\nstdout: %s\nstderr: %s", args, err, out.String(), errb.String())
	}
	var rep guestReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("guest report: %v: %s", err, out.String())
	}
	return rep
}

var summaryRE = regexp.MustCompile(`faults served (\d+) \((\d+) write, (\d+) zero\), bytes copied (\d+)`)

// TestHandleRestore restores a 256 MiB realistic snapshot through `aquifer
// handle` and the guest emulator in every handshake dialect, with two vCPU
// threads faulting concurrently, a balloon inflation at the midpoint (that
// range must read zero afterwards) and a recording of the working set.
func TestHandleRestore(t *testing.T) {
	f := newFixture(t)
	balloon := fmt.Sprintf("%d:%d", 64<<20, 8<<20)
	for _, ver := range []string{"1.4", "1.10", "1.12"} {
		for _, gap := range []string{"", "128MiB"} {
			name := "fc" + ver
			if gap != "" {
				name += "-2regions"
			}
			t.Run(name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				sock := filepath.Join(f.dir, name+".sock")
				rec := filepath.Join(f.dir, name+".rec")
				h := exec.CommandContext(ctx, bin, "handle", "--socket", sock, "--mem", f.mem, "--record", rec)
				var hout, herr bytes.Buffer
				h.Stdout, h.Stderr = &hout, &herr
				if err := h.Start(); err != nil {
					t.Fatal(err)
				}
				waitSocket(t, sock)
				args := []string{"--mem", f.mem, "--trace", f.trace, "--backend", "uffd", "--socket", sock,
					"--fc-version", ver, "--vcpus", "2", "--balloon", balloon}
				if gap != "" {
					args = append(args, "--gap-start", gap)
				}
				rep := runGuest(t, ctx, args...)
				if err := h.Wait(); err != nil {
					t.Fatalf("handle: %v\n%s\n%s", err, hout.String(), herr.String())
				}
				if rep.Mismatches != 0 || rep.Verified == 0 || !rep.BalloonDone {
					t.Fatalf("guest report %+v", rep)
				}
				wantRegions := 1
				if gap != "" {
					wantRegions = 2
				}
				if rep.Regions != wantRegions {
					t.Fatalf("regions %d, want %d", rep.Regions, wantRegions)
				}
				m := summaryRE.FindStringSubmatch(hout.String())
				if m == nil {
					t.Fatalf("no summary line in handle output: %q", hout.String())
				}
				faults, _ := strconv.Atoi(m[1])
				zero, _ := strconv.Atoi(m[3])
				if faults < rep.Pages || zero == 0 {
					t.Fatalf("handler served %d faults (%d zero) for %d distinct pages: %s", faults, zero, rep.Pages, hout.String())
				}
				if strings.Count(strings.TrimSpace(hout.String()), "\n") != 0 {
					t.Fatalf("handle printed more than one line: %q", hout.String())
				}
				tr, err := wset.ReadFile(rec)
				if err != nil {
					t.Fatal(err)
				}
				if len(tr.Accesses) == 0 || len(tr.Accesses) > rep.Pages {
					t.Fatalf("recorded %d first touches for %d distinct pages", len(tr.Accesses), rep.Pages)
				}
			})
		}
	}
}

// TestFileBackend replays the same trace through the File backend (cold
// page cache), with the same balloon.
func TestFileBackend(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep := runGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--backend", "file", "--drop-cache",
		"--vcpus", "2", "--gap-start", "128MiB", "--balloon", fmt.Sprintf("%d:%d", 64<<20, 8<<20))
	if rep.Mismatches != 0 || rep.Verified == 0 || !rep.BalloonDone || rep.Regions != 2 {
		t.Fatalf("guest report %+v", rep)
	}
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("socket %s did not appear", path)
}

// TestHandleImage converts the snapshot with a recorded working set and
// restores it through the pager (`aquifer handle --image`): the hot set is
// installed before the vCPUs resume, zero runs are left to the kernel, cold
// pages come from their extents, and every byte is verified — in every
// dialect, with the balloon.
func TestHandleImage(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rec := record(t, ctx, f)
	img := filepath.Join(f.dir, "img")
	if out, err := exec.CommandContext(ctx, bin, "convert", "--mem", f.mem, "--ws", rec, "--out", img, "--hot-budget", "500").CombinedOutput(); err != nil {
		t.Fatalf("convert: %v\n%s", err, out)
	}
	for _, ver := range []string{"1.4", "1.10", "1.12"} {
		t.Run("fc"+ver, func(t *testing.T) {
			sock := filepath.Join(f.dir, "img"+ver+".sock")
			ready := filepath.Join(f.dir, "ready"+ver)
			h := exec.CommandContext(ctx, bin, "handle", "--socket", sock, "--image", img, "--ready-file", ready)
			var hout, herr bytes.Buffer
			h.Stdout, h.Stderr = &hout, &herr
			if err := h.Start(); err != nil {
				t.Fatal(err)
			}
			waitSocket(t, sock)
			rep := runGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", sock, "--fc-version", ver,
				"--gap-start", "128MiB", "--wait-ready", ready, "--balloon", fmt.Sprintf("%d:%d", 64<<20, 8<<20))
			if err := h.Wait(); err != nil {
				t.Fatalf("handle --image: %v\n%s\n%s", err, hout.String(), herr.String())
			}
			if rep.Mismatches != 0 || rep.Verified == 0 || !rep.BalloonDone {
				t.Fatalf("guest report %+v", rep)
			}
			out := hout.String()
			m := regexp.MustCompile(`pre-installed (\d+) hot pages`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no pre-install count in %q", out)
			}
			if n, _ := strconv.Atoi(m[1]); n == 0 {
				t.Fatalf("nothing pre-installed: %s", out)
			}
			if !strings.Contains(out, "zero pages left to the kernel") {
				t.Fatalf("zero runs were not left to the kernel: %s", out)
			}
			m = regexp.MustCompile(`cold extents (\d+) demand \+ (\d+) prefetch`).FindStringSubmatch(out)
			if m == nil || m[1] == "0" || m[2] == "0" {
				t.Fatalf("expected demand and prefetched cold extents: %s", out)
			}
			t.Log(strings.TrimSpace(out))
		})
	}
}
