package pager

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
)

// heldTier is a hot tier serving its segment from held memory: the
// pre-install is held at the first page of a hot run (its UFFDIO_COPY),
// once the run is checked. The pre-install checks a run's pages just
// before it copies them, so the read of the run's last page, left missing,
// is what arms the hold.
type heldTier struct {
	*heldMem
	with atomic.Int32
	run  snapimage.Run // the run whose copy is held
}

// newHeldTier holds the pre-install at the first hot run of two pages or
// more with another hot run after it.
func newHeldTier(t *testing.T, f *fixture, good restore.HotSource) *heldTier {
	t.Helper()
	runs := f.img.HotRuns()
	at := -1
	for i, r := range runs[:len(runs)-1] {
		if r.Count >= 2 {
			at = i
			break
		}
	}
	if at < 0 {
		t.Fatalf("fixture: no hot run of two pages or more before the last of %d", len(runs))
	}
	run := runs[at]
	truth := hotBytes(t, good)
	_, nhot, _ := f.img.Counts()
	h := &heldTier{heldMem: newHeldMem(t, truth, run.Index+uint64(run.Count)-1, run.Index), run: run}
	if err := h.fill(truth, 0, nhot); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *heldTier) With(_ context.Context, fn func(hotSeg) error) error {
	h.with.Add(1)
	return fn(segmentOf(h.m.B))
}

func (h *heldTier) Name() string { return "held" }

// heldCold is a cold tier whose reads land in held memory (its arena):
// the install of one extent is held at a chosen page once the extent is
// verified.
type heldCold struct {
	*heldMem
	truth []byte // the cold segment
}

func newHeldCold(t *testing.T, f *fixture, x int, hold uint64) *heldCold {
	t.Helper()
	sec := f.img.Section(snapimage.SecColdSegment)
	truth := make([]byte, sec.Length)
	if _, err := f.file.ReadAt(truth, int64(sec.Offset)); err != nil {
		t.Fatal(err)
	}
	e := f.img.ColdExtents()[x]
	return &heldCold{newHeldMem(t, truth, e.First+uint64(e.Pages)-1, e.First+hold), truth}
}

func (c *heldCold) Read(_ context.Context, off uint64, dst []byte, _ bool) error {
	return c.fill(c.truth, off/ps, uint64(len(dst))/ps)
}

func (c *heldCold) Arena(n int) ([]byte, func() error, error) {
	return c.m.B[:n], func() error { return nil }, nil
}

func (c *heldCold) Name() string { return "held" }

// TestHotFaultInsidePreinstallWindow: a vCPU touches a hot page while the
// pre-install is still copying (held in the kernel at a hot run): the
// fault is served from the same validated window, byte for byte, and the
// vCPU woken, before the pre-install moves on; the pre-install then skips
// that page.
func TestHotFaultInsidePreinstallWindow(t *testing.T) {
	f := newFixture(t)
	snap, good, _ := f.snapshot(t)
	_, nhot, _ := f.img.Counts()
	tier := newHeldTier(t, f, good)
	snap.Hot = tier
	v := newVM(t)
	r := serveVM(t, snap, Options{}, v)
	t.Cleanup(tier.unhold) // before the session's cleanup waits for it
	tier.awaitHeld(t)
	// The fixture's hot set is one task of the pre-install (fewer than
	// preinstallTask pages): it is installed in order, on one thread.
	for i := uint64(0); i < nhot; i++ {
		p := f.img.HotPage(i)
		if in := resident(t, v, p); in != (i < tier.run.Index) {
			t.Fatalf("hot page %d (index %d) resident %v while the pre-install is held at index %d", p, i, in, tier.run.Index)
		}
	}
	p := f.img.HotPage(nhot - 1)
	await(t, "the hot fault inside the window", v.TouchAsync(p))
	f.check(t, p, v.Bytes(p))
	select {
	case <-r.s.Ready():
		t.Fatal("ready while the pre-install is held")
	default:
	}
	if held := f.img.HotPage(tier.run.Index); resident(t, v, held) {
		t.Fatal("the held page was installed before its release")
	}
	if n := tier.with.Load(); n != 1 {
		t.Fatalf("the hot tier opened %d windows, want 1 (the fault must be served from the pre-install's)", n)
	}
	tier.unhold()
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); i < nhot; i++ {
		f.installed(t, v, f.img.HotPage(i))
	}
	rep := r.finish(t)
	if rep.HotFaults != 1 || rep.PreinstallPages != nhot-1 || rep.Handler.Faults != 1 {
		t.Fatalf("report %+v: want 1 hot fault served and the other %d hot pages pre-installed", rep, nhot-1)
	}
}
