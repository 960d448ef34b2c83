package pager

import (
	"slices"
	"testing"
)

// TestLearnedColdExtents: a VM that faults on an untouched cold extent
// teaches the image's History; the next VM of the image has that extent
// read and installed before it is ready, so its guest finds the pages
// present, byte for byte, without a cold fault.
func TestLearnedColdExtents(t *testing.T) {
	f := newFixture(t)
	h := NewHistory(1 << 20)
	x := f.firstExtent(false) // not streamed by the prefetcher: only learning brings it
	p := f.extentPages(x)[0]

	snap, _, cold := f.snapshot(t)
	v := newVM(t)
	r := serveVM(t, snap, Options{History: h}, v)
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	f.touch(t, v, p)
	rep := r.finish(t)
	if rep.ColdFaults != 1 || rep.ColdDemandExtents != 1 || rep.LearnedExtents != 0 || rep.LearnedNew != 1 {
		t.Fatalf("first VM: report %+v, want one demand-read extent, learned", rep)
	}
	if got := h.Extents(); !slices.Equal(got, []int{x}) {
		t.Fatalf("history %v, want [%d]", got, x)
	}
	if reads := cold.readsOf(x); len(reads) != 1 || reads[0] {
		t.Fatalf("first VM: extent %d reads (prefetch?) %v, want one demand read", x, reads)
	}

	snap2, _, cold2 := f.snapshot(t)
	v2 := newVM(t)
	r2 := serveVM(t, snap2, Options{History: h}, v2)
	if err := r2.ready(t); err != nil {
		t.Fatal(err)
	}
	for _, q := range f.extentPages(x) {
		waitFor(t, "the learned extent to be installed", func() bool { return resident(t, v2, q) })
		f.installed(t, v2, q)
	}
	f.touch(t, v2, p)
	rep2 := r2.finish(t)
	if rep2.ColdFaults != 0 || rep2.ColdDemandExtents != 0 || rep2.LearnedExtents != 1 || rep2.LearnedNew != 0 {
		t.Fatalf("second VM: report %+v, want the learned extent read ahead and no cold fault", rep2)
	}
	if reads := cold2.readsOf(x); len(reads) != 1 || reads[0] {
		t.Fatalf("second VM: extent %d reads (prefetch?) %v, want one read at demand priority", x, reads)
	}
}

// TestLearnedReadFails: a learned extent whose read fails is left to demand:
// the VM is still ready and its fault reads the extent again.
func TestLearnedReadFails(t *testing.T) {
	f := newFixture(t)
	x := f.firstExtent(false)
	h := NewHistory(1 << 20)
	h.Learn([]int{x}, func(int) uint64 { return 8 * ps })
	snap, _, cold := f.snapshot(t)
	cold.failOnce(x)
	v := newVM(t)
	r := serveVM(t, snap, Options{History: h}, v)
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the learned read to fail", func() bool { return len(cold.readsOf(x)) == 1 })
	p := f.extentPages(x)[1]
	f.touch(t, v, p)
	rep := r.finish(t)
	if rep.ColdFaults != 1 || rep.ColdDemandExtents != 1 {
		t.Fatalf("report %+v: want the failed learned extent read again on demand", rep)
	}
}

func TestHistory(t *testing.T) {
	size := func(x int) uint64 { return uint64(x%3+1) * 100 }
	h := NewHistory(600)
	if n := h.Learn([]int{4, 2, 4, 7}, size); n != 3 { // 200 + 300 + 200
		t.Fatalf("learned %d, want 3 (a repeated extent once)", n)
	}
	// 700 bytes > 600: the oldest (4) left.
	if got := h.Extents(); !slices.Equal(got, []int{2, 7}) || h.Bytes() != 500 {
		t.Fatalf("history %v (%d bytes), want [2 7] (500): the oldest leaves over the budget", got, h.Bytes())
	}
	if n := h.Learn([]int{2, 9}, size); n != 1 || !slices.Equal(h.Extents(), []int{2, 7, 9}) || h.Bytes() != 600 {
		t.Fatalf("after 2, 9: added %d, history %v (%d bytes), want 1 added, [2 7 9] (600)", n, h.Extents(), h.Bytes())
	}
	if n := NewHistory(100).Learn([]int{2}, size); n != 0 {
		t.Fatal("an extent larger than the budget was learned")
	}
	var nilH *History
	if nilH.Learn([]int{1}, size) != 0 || nilH.Extents() != nil || nilH.Bytes() != 0 {
		t.Fatal("a nil history learned")
	}

	hs := NewHistories(1000, 2)
	a := hs.For("a")
	if hs.For("a") != a {
		t.Fatal("a second For of one image gave another history")
	}
	hs.For("b")
	hs.For("a") // a most recent: c evicts b
	hs.For("c")
	if hs.For("a") != a {
		t.Fatal("the most recently used history was evicted")
	}
	if NewHistories(0, 8).For("a") != nil {
		t.Fatal("learning off, yet a history")
	}
}
