package pager

import (
	"slices"
	"testing"
)

// TestLearnedColdPages: a VM that faults on a cold page no prefetch brings
// teaches the image's History; the next VM of the image has that page read
// and installed before it is ready (and only that page of its extent), so
// its guest finds it present, byte for byte, without a cold fault.
func TestLearnedColdPages(t *testing.T) {
	f := newFixture(t)
	h := NewHistory(64)
	x := f.firstExtent(false) // not streamed by the prefetcher: only learning brings it
	ext := f.extentPages(x)
	p := ext[1]
	_, idx, _ := f.img.Classify(p)

	snap, _, _ := f.snapshot(t)
	v := newVM(t)
	r := serveVM(t, snap, Options{History: h}, v)
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	f.touch(t, v, p)
	rep := r.finish(t)
	if rep.ColdFaults != 1 || rep.LearnedPages != 0 || rep.LearnedNew != 1 {
		t.Fatalf("first VM: report %+v, want one cold fault, learned", rep)
	}
	if got := h.Pages(); !slices.Equal(got, []uint64{idx}) {
		t.Fatalf("history %v, want [%d]", got, idx)
	}

	snap2, _, cold2 := f.snapshot(t)
	v2 := newVM(t)
	r2 := serveVM(t, snap2, Options{History: h}, v2)
	if err := r2.ready(t); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the learned page to be installed", func() bool { return resident(t, v2, p) })
	f.installed(t, v2, p)
	if resident(t, v2, ext[0]) {
		t.Fatalf("page %d of the learned page's extent was installed: only learned pages are", ext[0])
	}
	f.touch(t, v2, p)
	rep2 := r2.finish(t)
	if rep2.ColdFaults != 0 || rep2.ColdDemandExtents != 0 || rep2.LearnedPages != 1 || rep2.LearnedNew != 0 {
		t.Fatalf("second VM: report %+v, want the learned page installed ahead and no cold fault", rep2)
	}
	if reads := cold2.readsOf(x); len(reads) != 1 || reads[0] {
		t.Fatalf("second VM: extent %d reads (prefetch?) %v, want one read at demand priority", x, reads)
	}
}

// TestLearnedReadFails: learned pages whose read fails are left to demand:
// the VM is still ready and its fault reads the page's extent.
func TestLearnedReadFails(t *testing.T) {
	f := newFixture(t)
	x := f.firstExtent(false)
	p := f.extentPages(x)[0]
	_, idx, _ := f.img.Classify(p)
	h := NewHistory(64)
	h.Learn([]uint64{idx})
	snap, _, cold := f.snapshot(t)
	cold.failOnce(x)
	v := newVM(t)
	r := serveVM(t, snap, Options{History: h}, v)
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the learned read to fail", func() bool { return len(cold.readsOf(x)) == 1 })
	f.touch(t, v, p)
	rep := r.finish(t)
	if rep.ColdFaults != 1 || rep.ColdDemandExtents != 1 || rep.LearnedPages != 0 {
		t.Fatalf("report %+v: want the failed learned page read again on demand", rep)
	}
}

func TestHistory(t *testing.T) {
	h := NewHistory(3)
	if n := h.Learn([]uint64{4, 2, 4, 7}); n != 3 {
		t.Fatalf("learned %d, want 3 (a repeated page once)", n)
	}
	if n := h.Learn([]uint64{2, 9}); n != 1 || !slices.Equal(h.Pages(), []uint64{2, 7, 9}) {
		t.Fatalf("after 2, 9: added %d, history %v, want 1 added and [2 7 9]: the oldest leaves over the budget", n, h.Pages())
	}
	if NewHistory(0).Learn([]uint64{2}) != 0 {
		t.Fatal("a history of no pages learned")
	}
	var nilH *History
	if nilH.Learn([]uint64{1}) != 0 || nilH.Pages() != nil {
		t.Fatal("a nil history learned")
	}

	hs := NewHistories(8<<10, 2)
	a, created := hs.For("a", 4096)
	if again, recreated := hs.For("a", 4096); a == nil || !created || a.max != 2 || again != a || recreated {
		t.Fatal("For: want one history of 2 pages per image, created once")
	}
	hs.For("b", 4096)
	hs.For("a", 4096) // a most recent: c evicts b
	hs.For("c", 4096)
	if again, _ := hs.For("a", 4096); again != a {
		t.Fatal("the most recently used history was evicted")
	}
	if off, _ := NewHistories(0, 8).For("a", 4096); off != nil {
		t.Fatal("learning off, yet a history")
	}
	if huge, _ := hs.For("d", 2<<20); huge != nil {
		t.Fatal("a budget under one page, yet a history")
	}
}
