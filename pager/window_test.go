package pager

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
)

// heldTier is a hot tier serving its segment from held memory: the
// pre-install is held at hot page 0 (the first it copies) once the whole
// segment is verified.
type heldTier struct {
	*heldMem
	with atomic.Int32
}

func newHeldTier(t *testing.T, good restore.HotSource, nhot uint64) *heldTier {
	t.Helper()
	truth := hotBytes(t, good)
	h := &heldTier{heldMem: newHeldMem(t, truth, nhot-1, 0)}
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
// pre-install is still copying (held in the kernel at the first hot page):
// the fault is served from the same validated window, byte for byte, and
// the vCPU woken, before the pre-install moves on; the pre-install then
// skips that page.
func TestHotFaultInsidePreinstallWindow(t *testing.T) {
	f := newFixture(t)
	snap, good, _ := f.snapshot(t)
	_, nhot, _ := f.img.Counts()
	tier := newHeldTier(t, good, nhot)
	snap.Hot = tier
	v := newVM(t)
	r := serveVM(t, snap, Options{}, v)
	t.Cleanup(tier.unhold) // before the session's cleanup waits for it
	tier.awaitHeld(t)
	hotPages := f.pages(snapimage.Hot)
	first := f.img.HotPage(0)
	for _, p := range hotPages {
		if resident(t, v, p) {
			t.Fatalf("hot page %d installed while the pre-install is held at its first page", p)
		}
	}
	p := f.img.HotPage(nhot / 2)
	await(t, "the hot fault inside the window", v.TouchAsync(p))
	f.check(t, p, v.Bytes(p))
	select {
	case <-r.s.Ready():
		t.Fatal("ready while the pre-install is held")
	default:
	}
	if resident(t, v, first) {
		t.Fatal("the held page was installed before its release")
	}
	if n := tier.with.Load(); n != 1 {
		t.Fatalf("the hot tier opened %d windows, want 1 (the fault must be served from the pre-install's)", n)
	}
	tier.unhold()
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	for _, q := range hotPages {
		f.installed(t, v, q)
	}
	rep := r.finish(t)
	if rep.HotFaults != 1 || rep.PreinstallPages != nhot-1 || rep.Handler.Faults != 1 {
		t.Fatalf("report %+v: want 1 hot fault served and the other %d hot pages pre-installed", rep, nhot-1)
	}
}
