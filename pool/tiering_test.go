package pool

import (
	"context"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/control/member"
)

// TestPlacedHere: the heat writes' check before a promotion says "placed"
// only for the catalog's current version (its revision read from a real
// etcd member) with a cached placement in this pod; a changed entry, an
// uncached or an unplaced one sends the promotion through the full read.
func TestPlacedHere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := member.Start(ctx, member.Config{Dir: t.TempDir(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	plane, err := control.FromClient(ctx, m.Client(), m.Endpoints)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plane.Close() })
	published := time.Now().UTC()
	if err := plane.PutSnapshot(ctx, &control.Snapshot{Name: "fn", Published: published}); err != nil {
		t.Fatal(err)
	}
	cat, err := plane.GetSnapshot(ctx, "fn")
	if err != nil {
		t.Fatal(err)
	}
	p := &Pool{cfg: Config{Plane: plane}, cache: map[string]*entry{}}
	if p.placedHere(ctx, "fn") {
		t.Fatal("placed with nothing cached")
	}
	e := &entry{published: published, rev: cat.Rev}
	p.cache["fn"] = e
	if p.placedHere(ctx, "fn") {
		t.Fatal("placed with no placement cached (served from RDMA here)")
	}
	e.hot.Store(&control.Placement{Name: "fn", Published: published})
	if !p.placedHere(ctx, "fn") {
		t.Fatal("not placed: the current version with its placement cached")
	}
	if p.placedHere(ctx, "other") {
		t.Fatal("placed: a snapshot this host never opened")
	}
	// Any write to the entry changes its revision.
	cat.Seal = "rewritten"
	if err := plane.UpdateSnapshot(ctx, cat, nil); err != nil {
		t.Fatal(err)
	}
	if p.placedHere(ctx, "fn") {
		t.Fatal("placed after the catalog entry changed")
	}
}
