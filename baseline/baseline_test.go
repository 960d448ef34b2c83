package baseline_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/baseline"
	"github.com/aquifer-pool/aquifer/guest"
	"github.com/aquifer-pool/aquifer/handler"
	"github.com/aquifer-pool/aquifer/internal/testsnap"
	"github.com/aquifer-pool/aquifer/internal/testvm"
	"github.com/aquifer-pool/aquifer/wset"
)

const (
	ps    = testvm.PageSize
	pages = 256
)

// recording is a snapshot and the trace a recording run left of it.
func recording(t *testing.T) (string, []byte, *wset.Trace) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mem")
	if _, err := testsnap.Write(path, testsnap.Spec{Size: pages * ps, ZeroFrac: 0.5, Seed: 31}); err != nil {
		t.Fatal(err)
	}
	mem, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, mem, testsnap.Trace(testsnap.TraceSpec{MemSize: pages * ps, Accesses: 300, Pages: 60, CPUs: 2, Seed: 32})
}

func firstTouched(tr *wset.Trace) []uint64 {
	var out []uint64
	for _, a := range tr.FirstTouches() {
		out = append(out, a.Page)
	}
	return out
}

// TestREAP: the first fault installs the whole working set (every WS page
// present before any is touched), later WS touches never fault, other pages
// come on demand from the memory file, all byte for byte.
func TestREAP(t *testing.T) {
	memPath, mem, tr := recording(t)
	ws := filepath.Join(t.TempDir(), "ws")
	if err := baseline.BuildREAP(memPath, tr, ws); err != nil {
		t.Fatal(err)
	}
	src, err := baseline.OpenREAP(memPath, ws)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if src.Fetch <= 0 {
		t.Errorf("the WS fetch took %v: not measured", src.Fetch)
	}
	set := firstTouched(tr)
	v := testvm.New(t, testvm.Options{Size: pages * ps, Split: 100 * ps})
	h, err := handler.New(v.UFFD, v.Regions, src, handler.Options{NoHangup: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	src.Attach(h)
	done := make(chan handler.Stats, 1)
	go func() {
		st, err := h.Serve(context.Background(), -1)
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	check := func(p uint64) {
		t.Helper()
		if !bytes.Equal(v.Bytes(p), mem[p*ps:(p+1)*ps]) {
			t.Fatalf("page %d differs from the snapshot", p)
		}
	}
	var other uint64 = pages
	for p := uint64(0); p < pages; p++ {
		if !slices.Contains(set, p) {
			other = p
			break
		}
	}
	// The first fault, on a page outside the working set.
	if err := v.Touch(other); err != nil {
		t.Fatal(err)
	}
	check(other)
	if n := src.Installed.Load(); n != uint64(len(set)) {
		t.Fatalf("first fault installed %d pages, want the %d of the working set", n, len(set))
	}
	for _, p := range set {
		if r, _ := v.Resident(p); !r {
			t.Fatalf("working-set page %d not installed at the first fault", p)
		}
		check(p)
	}
	h.Stop()
	if st := <-done; st.Faults != 1 || st.Installed != uint64(len(set)) {
		t.Fatalf("stats %+v: want only the first fault served, %d pages installed", st, len(set))
	}
}

// TestOpenREAPRefusesBadFiles: a file that is not a REAP working set, one
// cut short and one naming pages beyond the memory are refused.
func TestOpenREAPRefusesBadFiles(t *testing.T) {
	memPath, _, tr := recording(t)
	dir := t.TempDir()
	ws := filepath.Join(dir, "ws")
	if err := baseline.BuildREAP(memPath, tr, ws); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(ws)
	if err != nil {
		t.Fatal(err)
	}
	small := filepath.Join(dir, "small")
	if err := os.WriteFile(small, make([]byte, 16*ps), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"not a working set": []byte("#!/bin/sh\necho hello\n"),
		"truncated index":   good[:30],
		"truncated pages":   good[:len(good)-1],
	} {
		p := filepath.Join(dir, "bad")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if s, err := baseline.OpenREAP(memPath, p); err == nil {
			s.Close()
			t.Errorf("%s: accepted", name)
		}
	}
	if s, err := baseline.OpenREAP(small, ws); err == nil {
		s.Close()
		t.Error("a working set of a larger memory was accepted")
	}
}

// TestFaaSnap: the loading set holds the non-zero first touches in
// first-touch order, every non-zero page is mapped from the memory file,
// and a restore through the plan reads every access byte for byte.
func TestFaaSnap(t *testing.T) {
	memPath, mem, tr := recording(t)
	planPath, err := baseline.BuildFaaSnap(memPath, tr, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	plan, err := guest.ReadFaaSnapPlan(planPath)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := os.ReadFile(plan.LoadingSet)
	if err != nil {
		t.Fatal(err)
	}
	zero := func(p uint64) bool { return bytes.Equal(mem[p*ps:(p+1)*ps], make([]byte, ps)) }
	var want []uint64
	for _, p := range firstTouched(tr) {
		if !zero(p) {
			want = append(want, p)
		}
	}
	var got []uint64
	for _, r := range plan.LS {
		for k := uint64(0); k < r[2]; k++ {
			got = append(got, r[0]+k)
			if !bytes.Equal(ls[(r[1]+k)*ps:(r[1]+k+1)*ps], mem[(r[0]+k)*ps:(r[0]+k+1)*ps]) {
				t.Fatalf("loading-set page %d does not hold guest page %d", r[1]+k, r[0]+k)
			}
		}
	}
	if !slices.Equal(got, want) || uint64(len(ls)) != uint64(len(want))*ps {
		t.Fatalf("loading set %v (%d bytes), want the non-zero first touches %v", got, len(ls), want)
	}
	mapped := map[uint64]bool{}
	for _, r := range plan.NonZero {
		for k := uint64(0); k < r[1]; k++ {
			mapped[r[0]+k] = true
		}
	}
	for p := uint64(0); p < pages; p++ {
		if !zero(p) && !mapped[p] {
			t.Fatalf("non-zero page %d is left anonymous", p)
		}
	}
	rep, err := guest.Run(context.Background(), guest.Config{MemPath: memPath, Backend: guest.BackendFaaSnap, FaaSnap: plan,
		GapStart: 100 * ps, Trace: tr, DropCache: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Verified != len(tr.Accesses) {
		t.Fatalf("report %+v", rep)
	}
}

// TestWSFetchSummaryParses: the fetch time a REAP handler prints in its
// summary line parses back to the same duration, wherever the line puts
// it; output without one does not parse.
func TestWSFetchSummaryParses(t *testing.T) {
	st := handler.Stats{Faults: 3, Installed: 9, Exit: "vm exited"}
	for _, d := range []time.Duration{1, 1234567, 3 * time.Second} {
		line := "aquifer handle: " + st.String() + "; " + baseline.WSFetchSummary(d) + "\n"
		if got, ok := baseline.ParseWSFetch(line); !ok || got != d {
			t.Errorf("%q: parsed %v %v, want %v", line, got, ok, d)
		}
	}
	for _, out := range []string{"", "aquifer handle: " + st.String() + "\n", "ws fetch ns", "ws fetch 99999999999999999999999 ns"} {
		if got, ok := baseline.ParseWSFetch(out); ok {
			t.Errorf("%q: parsed %v", out, got)
		}
	}
}
