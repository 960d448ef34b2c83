package control

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/control/member"
	"github.com/aquifer-pool/aquifer/pki"
)

// testPKI makes a CA, a member and a client certificate in dir.
func testPKI(t testing.TB, dir string) (*member.TLSFiles, Credentials) {
	t.Helper()
	ca, err := pki.OpenCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	mp, err := ca.Ensure(dir, "member", pki.Spec{CN: "member", Server: true, Client: true, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := ca.Ensure(dir, "client", pki.Spec{CN: "client", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, pki.CACert)
	tc, err := pki.ClientTLS(caFile, cp)
	if err != nil {
		t.Fatal(err)
	}
	return &member.TLSFiles{CAFile: caFile, CertFile: mp.CertFile, KeyFile: mp.KeyFile}, Credentials{TLS: tc}
}

func startPlane(t *testing.T) *Plane {
	t.Helper()
	p, _ := startPlanes(t)
	return p
}

// startPlanes starts a member and returns a Plane dialling it over mutual
// TLS and one calling it in-process (member.Client), as the daemon that
// runs it does.
func startPlanes(t testing.TB) (network, inProcess *Plane) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The member serves mutual TLS, as every member Aquifer runs does.
	dir := t.TempDir()
	files, creds := testPKI(t, dir)
	m, err := member.Start(ctx, member.Config{Dir: dir, TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	p, err := Connect(ctx, m.Endpoints, creds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	in, err := FromClient(ctx, m.Client(), m.Endpoints)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	return p, in
}

// TestControlPlane runs the control plane's operations through a client
// over TLS and through an in-process one on another member.
func TestControlPlane(t *testing.T) {
	network, _ := startPlanes(t)
	_, inProcess := startPlanes(t)
	t.Run("network", func(t *testing.T) { testControlPlane(t, network) })
	t.Run("in-process", func(t *testing.T) { testControlPlane(t, inProcess) })
}

// TestInProcessClient: what the daemon that runs the member writes through
// its in-process client, a process dialling the member reads, and the other
// way round; watches see both.
func TestInProcessClient(t *testing.T) {
	network, in := startPlanes(t)
	ctx := context.Background()
	seen := make(chan string, 4)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in.WatchSnapshots(wctx, func(name string, s *Snapshot) { seen <- name })
	time.Sleep(100 * time.Millisecond) // the watch is established
	if err := in.PutSnapshot(ctx, &Snapshot{Name: "from-daemon", Published: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := network.PutSnapshot(ctx, &Snapshot{Name: "from-cli", Published: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*Plane{network, in} {
		l, err := p.ListSnapshots(ctx)
		if err != nil || len(l) != 2 || l[0].Name != "from-cli" || l[1].Name != "from-daemon" {
			t.Fatalf("list: %v %v", l, err)
		}
	}
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case n := <-seen:
			got[n] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("the in-process watch saw only %v", got)
		}
	}
}

// BenchmarkSnapshotRev is the restore's one control-plane read (a snapshot's
// revision) through each client of a member.
func BenchmarkSnapshotRev(b *testing.B) {
	network, in := startPlanes(b)
	ctx := context.Background()
	if err := network.PutSnapshot(ctx, &Snapshot{Name: "fn", Published: time.Now()}); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		p    *Plane
	}{{"network", network}, {"in-process", in}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := c.p.SnapshotRev(ctx, "fn"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func testControlPlane(t *testing.T, p *Plane) {
	ctx := context.Background()

	t.Run("catalog", func(t *testing.T) {
		s := &Snapshot{Name: "fn-a", HotBytes: 4096, ColdBytes: 8192, Published: time.Now(),
			Segments: []SegmentPlacement{{ID: "fn-a/cold", Nodes: []string{"m1", "m2"}, Len: 8192, Kind: "cold"}}}
		if err := p.PutSnapshot(ctx, s); err != nil {
			t.Fatal(err)
		}
		if err := p.PutSnapshot(ctx, s); !errors.Is(err, ErrExists) {
			t.Fatalf("duplicate put: %v", err)
		}
		got, err := p.GetSnapshot(ctx, "fn-a")
		if err != nil || got.ColdBytes != 8192 || len(got.Segments) != 1 || got.Segments[0].Nodes[1] != "m2" {
			t.Fatalf("get: %+v %v", got, err)
		}
		if rev, err := p.SnapshotRev(ctx, "fn-a"); err != nil || rev != got.Rev {
			t.Fatalf("revision %d %v, want the entry's %d", rev, err, got.Rev)
		}
		if _, err := p.SnapshotRev(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("revision of a missing entry: %v", err)
		}
		if _, err := p.GetSnapshot(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("missing get: %v", err)
		}
		if _, err := p.GetSnapshot(ctx, "../etc"); err == nil {
			t.Fatal("invalid name accepted")
		}
		// Optimistic update: a stale revision is refused.
		got.HotBytes = 1
		if err := p.UpdateSnapshot(ctx, got, nil); err != nil {
			t.Fatal(err)
		}
		if err := p.UpdateSnapshot(ctx, got, nil); err == nil {
			t.Fatal("update with a stale revision accepted")
		}
		p.PutSnapshot(ctx, &Snapshot{Name: "fn-b", Published: time.Now()})
		list, err := p.ListSnapshots(ctx)
		if err != nil || len(list) != 2 || list[0].Name != "fn-a" {
			t.Fatalf("list: %v %v", list, err)
		}
		// Listings reuse the entries they decoded before: a caller's
		// change to its copy is not seen by the next listing, an update
		// and a delete are.
		list[0].HotBytes = 99
		again, err := p.ListSnapshots(ctx)
		if err != nil || len(again) != 2 || again[0].HotBytes != 1 || again[0] == list[0] {
			t.Fatalf("second list: %+v %v", again, err)
		}
		cur, err := p.GetSnapshot(ctx, "fn-a")
		if err != nil {
			t.Fatal(err)
		}
		cur.HotBytes = 2
		if err := p.UpdateSnapshot(ctx, cur, nil); err != nil {
			t.Fatal(err)
		}
		if err := p.DeleteSnapshot(ctx, "fn-b"); err != nil {
			t.Fatal(err)
		}
		if err := p.DeleteSnapshot(ctx, "fn-b"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second delete: %v", err)
		}
		after, err := p.ListSnapshots(ctx)
		if err != nil || len(after) != 1 || after[0].HotBytes != 2 || after[0].Rev == again[0].Rev {
			t.Fatalf("list after an update and a delete: %+v %v", after, err)
		}
	})

	t.Run("placements and heat", func(t *testing.T) {
		ps, err := p.NewPodState("podx", 5)
		if err != nil {
			t.Fatal(err)
		}
		base := time.Now()
		for i, n := range []string{"e1", "e2", "e3"} {
			pl := &Placement{Name: n, Pod: "podx", Published: base.Add(time.Duration(i) * time.Second), Extents: []HotExtent{{Descriptor: i, Gen: 2, Token: 7, Len: 4096}}}
			if err := ps.PutPlacement(ctx, pl, 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := ps.PutPlacement(ctx, &Placement{Name: "e1", Pod: "podx"}, 0); !errors.Is(err, ErrExists) {
			t.Fatalf("second placement of e1: %v", err)
		}
		if _, err := ps.Restored(ctx, "e1", base); err != nil {
			t.Fatal(err)
		}
		h, err := ps.Restored(ctx, "e1", base)
		if err != nil || h.Score < 1.99 || h.Score > 2.01 {
			t.Fatalf("heat after two restores: %+v %v", h, err)
		}
		if later := h.Now(base.Add(HalfLife)); later < 0.99 || later > 1.01 {
			t.Fatalf("heat after one half-life: %v, want 1", later)
		}
		pls, _ := ps.Placements(ctx)
		heats, _ := ps.Heats(ctx)
		var names []string
		for _, pl := range Coldest(pls, heats, base) {
			names = append(names, pl.Name)
		}
		if len(names) != 3 || names[0] != "e2" || names[1] != "e3" || names[2] != "e1" {
			t.Fatalf("coldest first %v, want [e2 e3 e1]", names)
		}
		got, err := ps.GetPlacement(ctx, "e2")
		if err != nil || got.Extents[0].Descriptor != 1 {
			t.Fatalf("get e2: %+v %v", got, err)
		}
		p.PutSnapshot(ctx, &Snapshot{Name: "e2", Published: time.Now()})
		p.PutSnapshot(ctx, &Snapshot{Name: "e4", Published: time.Now()})
		snap, _ := p.GetSnapshot(ctx, "e2")
		if rev, pl, err := ps.SnapshotRevAndPlacement(ctx, "e2"); err != nil || snap == nil || rev != snap.Rev || pl == nil || pl.Rev != got.Rev || pl.Extents[0].Descriptor != 1 {
			t.Fatalf("e2 in one read: revision %d, placement %+v, %v; want %v and the placement at %d", rev, pl, err, snap, got.Rev)
		}
		if rev, pl, err := ps.SnapshotRevAndPlacement(ctx, "e4"); err != nil || rev == 0 || pl != nil {
			t.Fatalf("e4 (no placement): revision %d, placement %+v, %v", rev, pl, err)
		}
		if _, _, err := ps.SnapshotRevAndPlacement(ctx, "e3"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("e3 has a placement but no catalog entry: %v, want ErrNotFound", err)
		}
		if err := ps.DeletePlacement(ctx, "e2", got.Rev+1); err == nil {
			t.Fatal("delete at a stale revision accepted")
		}
		if err := ps.DeletePlacement(ctx, "e2", got.Rev); err != nil {
			t.Fatal(err)
		}
		if _, err := ps.GetPlacement(ctx, "e2"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted placement: %v", err)
		}
	})

	t.Run("fencing", func(t *testing.T) {
		tok, err := p.Acquire(ctx, "pod0", "host-a", 2)
		if err != nil {
			t.Fatal(err)
		}
		// A second holder waits until the first releases.
		got := make(chan *Token, 1)
		go func() {
			t2, err := p.Acquire(ctx, "pod0", "host-b", 2)
			if err != nil {
				t.Error(err)
			}
			got <- t2
		}()
		select {
		case <-got:
			t.Fatal("second owner acquired while the first held the resource")
		case <-time.After(200 * time.Millisecond):
		}
		s, _ := p.GetSnapshot(ctx, "fn-a")
		if err := p.UpdateSnapshot(ctx, s, tok); err != nil {
			t.Fatalf("update under valid ownership: %v", err)
		}
		if err := p.Release(ctx, tok); err != nil {
			t.Fatal(err)
		}
		t2 := <-got
		if t2 == nil || t2.Value() <= tok.Value() {
			t.Fatalf("new token %v not larger than %v", t2, tok.Value())
		}
		s, _ = p.GetSnapshot(ctx, "fn-a")
		if err := p.UpdateSnapshot(ctx, s, tok); !errors.Is(err, ErrFenced) {
			t.Fatalf("update with a stale token: %v, want ErrFenced", err)
		}
		if ok, _ := p.Valid(ctx, t2); !ok {
			t.Fatal("current token reported invalid")
		}
		p.Release(ctx, t2)
	})

	t.Run("membership and placement", func(t *testing.T) {
		r1, err := p.RegisterMemNode(ctx, Member{ID: "m1", Addr: "127.0.0.1:1", Capacity: 100}, 1)
		if err != nil {
			t.Fatal(err)
		}
		r2, _ := p.RegisterMemNode(ctx, Member{ID: "m2", Addr: "127.0.0.1:2", Capacity: 300}, 1)
		_, _ = p.RegisterMemNode(ctx, Member{ID: "m3", Addr: "127.0.0.1:3", Capacity: 200, Used: 150}, 1)
		nodes, err := p.MemNodes(ctx)
		if err != nil || len(nodes) != 3 {
			t.Fatalf("nodes %v %v", nodes, err)
		}
		pl, err := PlaceSegment(nodes, 60, 2)
		if err != nil || pl[0].ID != "m2" || pl[1].ID != "m1" {
			t.Fatalf("placement %v %v", pl, err)
		}
		if _, err := PlaceSegment(nodes, 250, 2); err == nil {
			t.Fatal("placement beyond capacity accepted")
		}
		r1.Close(ctx)
		nodes, _ = p.MemNodes(ctx)
		if len(nodes) != 2 {
			t.Fatalf("revoked member still listed: %v", nodes)
		}
		r2.cancel() // stop keepalives: the lease must expire by itself
		deadline := time.Now().Add(5 * time.Second)
		for {
			nodes, _ = p.MemNodes(ctx)
			found := false
			for _, n := range nodes {
				found = found || n.ID == "m2"
			}
			if !found {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("member with an expired lease still listed")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}
