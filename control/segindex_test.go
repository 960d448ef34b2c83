package control

import (
	"context"
	"sync"
	"testing"
	"time"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSegmentIndex keeps the catalog's segment lists: entries published
// before and after the index started, replaced and removed, and an entry
// that lists no segments (which makes the view incomplete).
func TestSegmentIndex(t *testing.T) {
	p := startPlane(t)
	ctx := context.Background()
	seg := func(ids ...uint64) []SegmentPlacement {
		var out []SegmentPlacement
		for _, id := range ids {
			out = append(out, SegmentPlacement{ID: FormatSegmentID(id), Nodes: []string{"a:1"}, Len: 4096, Kind: "cold"})
		}
		return out
	}
	if err := p.PutSnapshot(ctx, &Snapshot{Name: "a", Segments: seg(1, 2)}); err != nil {
		t.Fatal(err)
	}
	x, err := p.WatchSegmentIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	ref := func(id uint64) bool { r, _, _ := x.Lookup(id); return r }
	if !ref(1) || !ref(2) || ref(3) {
		t.Fatal("entries published before the index started are not in it")
	}
	if err := p.PutSnapshot(ctx, &Snapshot{Name: "b", Segments: seg(2, 0xdeadbeef00000000)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a new entry", func() bool { return ref(0xdeadbeef00000000) })
	if err := p.DeleteSnapshot(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a removed entry", func() bool { return !ref(1) })
	if !ref(2) {
		t.Fatal("segment 2 is still listed by b")
	}
	s, err := p.GetSnapshot(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	s.Segments = seg(5)
	if err := p.UpdateSnapshot(ctx, s, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a replaced entry", func() bool { return ref(5) && !ref(2) })
	if err := p.PutSnapshot(ctx, &Snapshot{Name: "old"}); err != nil {
		t.Fatal(err)
	}
	// Per node: entries name where each segment lives.
	if _, here, _ := x.Lookup(5); !here {
		t.Fatal("before SetSelf every listed segment counts as here")
	}
	x.SetSelf("b:1")
	if listed, here, _ := x.Lookup(5); !listed || here {
		t.Fatal("segment 5 is listed on a:1 only")
	}
	x.SetSelf("a:1")
	if _, here, _ := x.Lookup(5); !here {
		t.Fatal("segment 5 is listed on a:1")
	}
	waitFor(t, "an entry without segments", func() bool { _, _, complete := x.Lookup(5); return !complete })
	if err := x.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if e, n, l := x.Counts(); e != 2 || n != 1 || l != 1 {
		t.Fatalf("counts: %d entries, %d segments, %d without a list", e, n, l)
	}
	if _, err := ParseSegmentID("12"); err == nil {
		t.Fatal("short segment ID accepted")
	}
}

func TestWatchMemNodes(t *testing.T) {
	p := startPlane(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var seen []Member
	p.WatchMemNodes(ctx, func(ms []Member) { mu.Lock(); seen = ms; mu.Unlock() })
	got := func() []Member { mu.Lock(); defer mu.Unlock(); return seen }
	r, err := p.RegisterMemNode(ctx, Member{ID: "m1", Addr: "127.0.0.1:1", Capacity: 100, Self: true}, 5)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a registration", func() bool { g := got(); return len(g) == 1 && g[0].Self && g[0].Capacity == 100 })
	if err := p.UpdateUsage(ctx, r, Member{ID: "m1", Addr: "127.0.0.1:1", Capacity: 100, Used: 40, Self: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a usage report", func() bool { g := got(); return len(g) == 1 && g[0].Used == 40 })
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a node leaving", func() bool { return len(got()) == 0 })
}
