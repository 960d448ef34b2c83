package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/hugetlb/hugetlbtest"
	"github.com/aquifer-pool/aquifer/internal/testsnap"
	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/wset"
)

// 2 MiB guests (Firecracker's huge_pages "2M"): the guest emulator maps
// hugetlb memory and sends page_size 2097152; every serving path must
// install whole huge pages and every byte must match.

const (
	hugeMemSize = 48 << 20 // 24 huge pages
	hugePages   = hugeMemSize / (2 << 20)
	// hugeNeed is what one 2 MiB guest of the fixture can hold at once,
	// with room for a restore still exiting while the next starts.
	hugeNeed = 2*hugePages + 4
)

// hugeFixture is a 48 MiB snapshot of 2 MiB pages of every kind: all zero,
// sparse (a few non-zero 4 KiB sub-pages), half full and full; a 4 KiB
// trace touching 2 MiB pages 0..17 (rec: the recording, a part of it) and
// an evaluation trace touching all of them, so a 2 MiB image made from the
// recording has hot and cold pages.
type hugeFixture struct {
	fixture
	rec string // 4 KiB recording (pages of 2 MiB pages 0..15 only)
}

func newHugeFixture(t *testing.T) *hugeFixture {
	t.Helper()
	dir := t.TempDir()
	f := &hugeFixture{fixture: fixture{dir: dir, mem: filepath.Join(dir, "mem"), trace: filepath.Join(dir, "trace.ws")},
		rec: filepath.Join(dir, "rec.ws")}
	mem := make([]byte, hugeMemSize)
	rng := rand.New(rand.NewPCG(31, 32))
	const sub = 512
	for hp := 0; hp < hugePages; hp++ {
		var n int
		switch hp % 4 {
		case 0:
			n = 0 // zero
		case 1:
			n = 3 // sparse
		case 2:
			n = sub / 2
		case 3:
			n = sub
		}
		if hp == 0 {
			n = sub / 2 // guest page 0 is never zero in a real guest
		}
		for _, k := range rng.Perm(sub)[:n] {
			b := mem[hp<<21+k*4096:][:4096]
			for i := 0; i < len(b); i += 8 {
				binary.LittleEndian.PutUint64(b[i:], rng.Uint64()|1)
			}
		}
	}
	if err := os.WriteFile(f.mem, mem, 0o644); err != nil {
		t.Fatal(err)
	}
	all := testsnap.Trace(testsnap.TraceSpec{MemSize: hugeMemSize, Accesses: 5000, Pages: 2500, WriteFrac: 0.2, CPUs: 2, Seed: 33})
	fp, err := wset.FingerprintFile(f.mem) // the recording below is of this memory
	if err != nil {
		t.Fatal(err)
	}
	if err := all.Bind(fp); err != nil {
		t.Fatal(err)
	}
	if err := wset.WriteFile(f.trace, all); err != nil {
		t.Fatal(err)
	}
	rec := *all
	rec.Accesses = nil
	for _, a := range all.Accesses {
		if a.Page/512 < 16 {
			rec.Accesses = append(rec.Accesses, a)
		}
	}
	if err := wset.WriteFile(f.rec, &rec); err != nil {
		t.Fatal(err)
	}
	return f
}

type hugeReport struct {
	guestReport
	PageSize         uint64 `json:"page_size"`
	Whole            int    `json:"whole_pages_verified"`
	BalloonReclaimed uint64 `json:"balloon_reclaimed_bytes"`
}

func runHugeGuest(t *testing.T, ctx context.Context, args ...string) hugeReport {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, append([]string{"guest", "run", "--json", "--page-size", "2MiB", "--vcpus", "2"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("guest %v: %v\nstdout: %s\nstderr: %s", args, err, out.String(), errb.String())
	}
	var rep hugeReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("guest report: %v: %s", err, out.String())
	}
	if rep.PageSize != 2<<20 || rep.Mismatches != 0 || rep.Verified == 0 || rep.Whole == 0 || rep.VCPUs != 2 {
		t.Fatalf("guest report %+v", rep)
	}
	return rep
}

// touchedHuge counts the non-zero and zero 2 MiB pages a trace touches.
func touchedHuge(t *testing.T, f *hugeFixture, trace string) (nonzero, zero int) {
	t.Helper()
	tr, err := wset.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.ReadFile(f.mem)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for _, a := range tr.Accesses {
		hp := a.Page * uint64(tr.PageSize) >> 21
		if seen[hp] {
			continue
		}
		seen[hp] = true
		if bytes.Count(mem[hp<<21:(hp+1)<<21], []byte{0}) == 2<<20 {
			zero++
		} else {
			nonzero++
		}
	}
	return nonzero, zero
}

// startHugeHandle runs aquifer handle with args on a new socket.
func startHugeHandle(t *testing.T, ctx context.Context, sock string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	h := exec.CommandContext(ctx, bin, append([]string{"handle", "--socket", sock}, args...)...)
	var hout bytes.Buffer
	h.Stdout, h.Stderr = &hout, os.Stderr
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	waitSocket(t, sock)
	return h, &hout
}

// TestHugeHandle restores a 2 MiB guest through `aquifer handle` (the
// firecracker-uffd baseline) in the 1.10 and 1.12 dialects with two vCPUs
// and two regions: one fault per 2 MiB page touched, 2 MiB copied per
// fault, every byte of every touched huge page verified; the recording is
// in 2 MiB pages. Then REAP with a 2 MiB working set.
func TestHugeHandle(t *testing.T) {
	hugetlbtest.Need(t, hugeNeed)
	f := newHugeFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nonzero, zero := touchedHuge(t, f, f.trace)
	for _, ver := range []string{"1.10", "1.12"} {
		t.Run("fc"+ver, func(t *testing.T) {
			sock := filepath.Join(f.dir, "h"+ver+".sock")
			rec := filepath.Join(f.dir, "h"+ver+".rec")
			h, hout := startHugeHandle(t, ctx, sock, "--mem", f.mem, "--record", rec)
			rep := runHugeGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", sock, "--fc-version", ver, "--gap-start", "16MiB")
			if err := h.Wait(); err != nil {
				t.Fatalf("handle: %v\n%s", err, hout)
			}
			if rep.Regions != 2 || rep.Whole != nonzero+zero {
				t.Fatalf("regions %d, %d huge pages verified whole, want 2 and %d", rep.Regions, rep.Whole, nonzero+zero)
			}
			m := summaryRE.FindStringSubmatch(hout.String())
			if m == nil {
				t.Fatalf("no summary: %q", hout)
			}
			faults, _ := strconv.Atoi(m[1])
			copied, _ := strconv.ParseUint(m[4], 10, 64)
			// Each touched huge page faults once (a write fault on a page
			// read first is a second one only for 4 KiB pages: a
			// private hugetlb page is writable once installed).
			if faults != nonzero+zero || copied != uint64(faults)<<21 {
				t.Fatalf("%d faults copying %d bytes for %d touched huge pages: %s", faults, copied, nonzero+zero, hout)
			}
			tr, err := wset.ReadFile(rec)
			if err != nil {
				t.Fatal(err)
			}
			if tr.PageSize != 2<<20 || len(tr.Accesses) != nonzero+zero {
				t.Fatalf("recording of %d-byte pages with %d first touches", tr.PageSize, len(tr.Accesses))
			}
			t.Log(strings.TrimSpace(hout.String()))
		})
	}
	t.Run("reap", func(t *testing.T) {
		ws := filepath.Join(f.dir, "reap.ws")
		if out, err := exec.CommandContext(ctx, bin, "baseline", "reap", "--mem", f.mem, "--ws", f.rec, "--out", ws, "--page-size", "2MiB").CombinedOutput(); err != nil {
			t.Fatalf("baseline reap: %v\n%s", err, out)
		}
		sock := filepath.Join(f.dir, "reap.sock")
		h, hout := startHugeHandle(t, ctx, sock, "--mem", f.mem, "--reap-ws", ws)
		runHugeGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", sock, "--fc-version", "1.12")
		if err := h.Wait(); err != nil {
			t.Fatalf("handle --reap-ws: %v\n%s", err, hout)
		}
		m := regexp.MustCompile(`pre-installed (\d+) pages`).FindStringSubmatch(hout.String())
		if m == nil || m[1] != "16" {
			t.Fatalf("REAP installed %v of the recording's 16 huge pages: %s", m, hout)
		}
		// A 4 KiB REAP file on a 2 MiB guest is refused, not misapplied.
		ws4k := filepath.Join(f.dir, "reap4k.ws")
		if out, err := exec.CommandContext(ctx, bin, "baseline", "reap", "--mem", f.mem, "--ws", f.rec, "--out", ws4k).CombinedOutput(); err != nil {
			t.Fatalf("baseline reap: %v\n%s", err, out)
		}
		sock = filepath.Join(f.dir, "reap4k.sock")
		h, hout = startHugeHandle(t, ctx, sock, "--mem", f.mem, "--reap-ws", ws4k)
		g := exec.CommandContext(ctx, bin, "guest", "run", "--page-size", "2MiB", "--mem", f.mem, "--trace", f.trace, "--socket", sock)
		g.Start()
		err := h.Wait()
		g.Process.Kill()
		g.Wait()
		if err == nil {
			t.Fatalf("handle served a 2 MiB guest from a 4 KiB REAP file: %s", hout)
		}
	})
}

// TestHugeBalloon: Firecracker's balloon discards guest 4 KiB frames; on a
// 2 MiB guest the kernel discards only whole aligned huge pages. A balloon
// range that starts inside a huge page reclaims nothing (no REMOVE reaches
// the handler, the memory keeps its content); an aligned 6 MiB + 8 KiB
// range discards three huge pages (one REMOVE; they read as zeros and the
// handler answers their faults with zero pages, never snapshot data).
func TestHugeBalloon(t *testing.T) {
	hugetlbtest.Need(t, hugeNeed)
	f := newHugeFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range []struct {
		name, balloon string
		reclaimed     uint64
		removes       string
	}{
		{"unaligned-4KiB", fmt.Sprintf("%d:%d", 8<<20+4096, 64<<10), 0, "0"},
		{"aligned", fmt.Sprintf("%d:%d", 8<<20, 6<<20+8192), 6 << 20, "1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sock := filepath.Join(f.dir, c.name+".sock")
			h, hout := startHugeHandle(t, ctx, sock, "--mem", f.mem)
			rep := runHugeGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", sock, "--fc-version", "1.12", "--balloon", c.balloon)
			if err := h.Wait(); err != nil {
				t.Fatalf("handle: %v\n%s", err, hout)
			}
			if !rep.BalloonDone || rep.BalloonReclaimed != c.reclaimed {
				t.Fatalf("balloon reclaimed %d bytes, want %d: %+v", rep.BalloonReclaimed, c.reclaimed, rep)
			}
			if m := regexp.MustCompile(`removes (\d+)`).FindStringSubmatch(hout.String()); m == nil || m[1] != c.removes {
				t.Fatalf("handler saw removes %v, want %s: %s", m, c.removes, hout)
			}
		})
	}
}

// TestHugeFileBackendRefused: like Firecracker, the File backend does not
// restore a 2 MiB guest, and says what to use.
func TestHugeFileBackendRefused(t *testing.T) {
	f := newHugeFixture(t)
	out, err := exec.Command(bin, "guest", "run", "--page-size", "2MiB", "--backend", "file", "--mem", f.mem, "--trace", f.trace).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Firecracker refuses the File memory backend") || !strings.Contains(string(out), "--backend uffd") {
		t.Fatalf("file backend on a 2 MiB guest: %v\n%s", err, out)
	}
}

// convertHuge makes the 2 MiB image of the fixture from its 4 KiB
// recording and checks what convert reports.
func convertHuge(t *testing.T, ctx context.Context, f *hugeFixture) string {
	t.Helper()
	img := filepath.Join(f.dir, "huge.img")
	out, err := exec.CommandContext(ctx, bin, "convert", "--mem", f.mem, "--ws", f.rec, "--out", img, "--page-size", "2MiB", "--json").CombinedOutput()
	if err != nil {
		t.Fatalf("convert: %v\n%s", err, out)
	}
	var raw struct {
		PageSize     uint64 `json:"page_size"`
		SubPageSize  uint64 `json:"sub_page_size"`
		ZeroPages    uint64 `json:"zero_pages"`
		HotPages     uint64 `json:"hot_pages"`
		ColdPages    uint64 `json:"cold_pages"`
		ZeroSubPages uint64 `json:"zero_sub_pages"`
		WorkingSet   string `json:"working_set"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatalf("convert --json: %v: %s", err, out)
	}
	// 24 pages: every 4th but page 0 zero (5); the recording touches
	// pages 0..15 (13 non-zero: hot), the other 6 non-zero pages are cold.
	if raw.PageSize != 2<<20 || raw.SubPageSize != 4096 || raw.ZeroPages != 5 || raw.HotPages != 13 || raw.ColdPages != 6 || raw.ZeroSubPages == 0 || raw.WorkingSet != "bound" {
		t.Fatalf("convert stats %s", out)
	}
	return img
}

// TestHugeHandleImage serves the 2 MiB image through the pager (`aquifer
// handle --image`) in both dialects: hot huge pages pre-installed (sparse
// ones rebuilt from their stored sub-pages), zero huge pages left to the
// kernel, cold ones demand-paged by extent, every byte verified.
func TestHugeHandleImage(t *testing.T) {
	hugetlbtest.Need(t, hugeNeed)
	f := newHugeFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	img := convertHuge(t, ctx, f)
	if out, err := exec.CommandContext(ctx, bin, "verify", img, "--mem", f.mem).CombinedOutput(); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	for _, ver := range []string{"1.10", "1.12"} {
		t.Run("fc"+ver, func(t *testing.T) {
			sock := filepath.Join(f.dir, "img"+ver+".sock")
			ready := filepath.Join(f.dir, "ready"+ver)
			h, hout := startHugeHandle(t, ctx, sock, "--image", img, "--ready-file", ready)
			runHugeGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", sock, "--fc-version", ver, "--gap-start", "16MiB", "--wait-ready", ready)
			if err := h.Wait(); err != nil {
				t.Fatalf("handle --image: %v\n%s", err, hout)
			}
			out := hout.String()
			if m := regexp.MustCompile(`pre-installed (\d+) hot pages`).FindStringSubmatch(out); m == nil || m[1] != "13" {
				t.Fatalf("pre-installed %v of 13 hot huge pages: %s", m, out)
			}
			if !strings.Contains(out, "zero pages left to the kernel") {
				t.Fatalf("zero huge pages were not left to the kernel: %s", out)
			}
			if m := regexp.MustCompile(`cold extents (\d+) demand`).FindStringSubmatch(out); m == nil || m[1] == "0" {
				t.Fatalf("no cold huge page demand-paged: %s", out)
			}
			t.Log(strings.TrimSpace(out))
		})
	}
}

// TestHugePool publishes the 2 MiB image into the embedded pod (`serve
// --embedded --huge-pages`) and restores it with `guest run --pager-api
// --page-size 2MiB` in both dialects: hot huge pages from CXL, cold ones
// from the memory nodes, every byte verified; the daemon's report counts
// one fault per huge page it did not pre-install.
func TestHugePool(t *testing.T) {
	hugetlbtest.Need(t, hugeNeed+8)
	f := newHugeFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	img := convertHuge(t, ctx, f)
	// Chunks of 4 MiB: the 13 MiB hot segment is stored as four CXL
	// extents, and stored pages straddle their boundaries.
	im, imf, err := snapimage.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	imf.Close()
	_, nhot, _ := im.Counts()
	straddle := 0
	for i := uint64(0); i < nhot; i++ {
		if off, n := im.Span(snapimage.SecHotSegment, i); off/(4<<20) != (off+n-1)/(4<<20) {
			straddle++
		}
	}
	if straddle == 0 {
		t.Fatal("no hot page straddles a 4 MiB extent boundary: the test would not exercise split pages")
	}
	s := startPool(t, ctx, t.TempDir(), "--huge-pages", "8", "--cxl-chunk", "4MiB")
	if out := s.publish(t, ctx, img, "huge"); !strings.Contains(out, "hot set in CXL") {
		t.Fatalf("hot segment not placed in CXL: %s", out)
	}
	for _, ver := range []string{"1.10", "1.12"} {
		t.Run("fc"+ver, func(t *testing.T) {
			vm := "h" + strings.ReplaceAll(ver, ".", "")
			args := []string{"--mem", f.mem, "--trace", f.trace, "--pager-api", s.api, "--vm", vm, "--snapshot", "huge",
				"--fc-version", ver, "--gap-start", "16MiB"}
			if ver == "1.12" {
				// A balloon discarding three whole huge pages (hot and
				// cold ones): one REMOVE, zeros there from then on.
				args = append(args, "--balloon", fmt.Sprintf("%d:%d", 8<<20, 6<<20+8192))
			}
			rep := runHugeGuest(t, ctx, args...)
			v := s.waitExited(t, ctx, vm)
			r := v.Report
			if r.HotSource != "cxl" || r.PreinstallPages != 13 || r.PreinstallBytes != 13<<21 || r.ColdFaults == 0 || r.ColdBytesRead == 0 {
				t.Fatalf("vm %s report %+v", vm, r)
			}
			if r.Handler.BytesCopied%(2<<20) != 0 {
				t.Fatalf("copied %d bytes: not whole huge pages", r.Handler.BytesCopied)
			}
			if ver == "1.12" && (rep.BalloonReclaimed != 6<<20 || r.Handler.Removes != 1) {
				t.Fatalf("balloon reclaimed %d bytes, daemon saw %d removes", rep.BalloonReclaimed, r.Handler.Removes)
			}
		})
	}
}

// TestHugePoolTooSmall: a daemon told its 2 MiB guests need more huge
// pages than the host's pool has refuses to start, naming the sysctl.
func TestHugePoolTooSmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	out, err := exec.CommandContext(ctx, bin, "serve", "--embedded", "--data-dir", filepath.Join(dir, "d"), "--cxl-path", filepath.Join(dir, "cxl"),
		"--api", filepath.Join(dir, "api.sock"), "--huge-pages", "100000000").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--huge-pages") || !strings.Contains(string(out), "sysctl -w vm.nr_hugepages=") {
		t.Fatalf("serve --huge-pages beyond the pool: %v\n%s", err, out)
	}
}

// waitExited waits until the daemon has recorded vm's report.
func (s *poolServer) waitExited(t *testing.T, ctx context.Context, vm string) *api.VM {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := s.pc.Get(ctx, vm)
		if err != nil {
			t.Fatalf("vm %s: %v", vm, err)
		}
		if v.State == api.StateExited || v.State == api.StateFailed || time.Now().After(deadline) {
			if v.State != api.StateExited || v.Report == nil {
				t.Fatalf("vm %s: daemon state %s (%s), report %v", vm, v.State, v.Error, v.Report)
			}
			return v
		}
		time.Sleep(10 * time.Millisecond)
	}
}
