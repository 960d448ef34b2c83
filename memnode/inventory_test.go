package memnode

import (
	"os"
	"testing"
	"time"
)

// TestWritersPersistAndList stores segments as two writers, restarts the
// store from its data dir (with one segment in the old file format, which
// recorded no writer), and lists it page by page.
func TestWritersPersistAndList(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(8<<20, 4<<20, dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	for id := uint64(1); id <= 5; id++ {
		w := "host pod1/host1"
		if id%2 == 0 {
			w = "host pod2/host2"
		}
		if _, _, err := s.PutAs(mkPut(id*10, 2, byte(id)), w); err != nil {
			t.Fatal(err)
		}
	}
	// An identical re-put by someone else keeps the first writer.
	if _, existed, err := s.PutAs(mkPut(10, 2, 1), "host pod3/host3"); err != nil || !existed {
		t.Fatalf("re-put: %v %v", existed, err)
	}
	// Segment 60 in the version 1 format.
	g, _, err := s.put(mkPut(60, 1, 6), "", time.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(s.segPath(60))
	if err != nil {
		t.Fatal(err)
	}
	f.Write(encodeFileHeaderV1(g))
	f.Write(g.data)
	f.Close()
	s.Close()

	s, err = OpenStore(8<<20, 4<<20, dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Segments() != 6 {
		t.Fatalf("%d segments after restart, want 6", s.Segments())
	}
	var all []SegmentMeta
	var from uint64
	for pages := 0; ; pages++ {
		l, more, next := s.List(from, 4)
		all = append(all, l...)
		if !more {
			break
		}
		if next <= from || pages > 3 {
			t.Fatalf("cursor %d → %d", from, next)
		}
		from = next
	}
	if len(all) != 6 {
		t.Fatalf("listed %d segments: %+v", len(all), all)
	}
	for i, m := range all {
		id := uint64(i+1) * 10
		want := "host pod1/host1"
		if id%20 == 0 {
			want = "host pod2/host2"
		}
		if id == 60 {
			want = ""
		}
		if m.ID != id || m.Writer != want || m.PutAt.Before(before.Add(-time.Second)) || m.PutAt.After(time.Now()) {
			t.Errorf("segment %d: %+v (want writer %q, stored since %v)", id, m, want, before)
		}
	}
	if l, more, _ := s.List(61, 10); len(l) != 0 || more {
		t.Fatalf("list past the end: %+v %v", l, more)
	}
	if err := s.Delete(30); err != nil {
		t.Fatal(err)
	}
	if l, _, _ := s.List(0, 10); len(l) != 5 || l[2].ID != 40 {
		t.Fatalf("after delete: %+v", l)
	}
}
