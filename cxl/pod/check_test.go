package pod_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/cxl/pod/podtest"
	"github.com/aquifer-pool/aquifer/cxl/shm"
)

// TestCheckDescriptors: Check and Inspect see every descriptor of a table
// larger than one scan block (published ones, never-written ones), and a
// descriptor line that fails its CRC anywhere in the table fails Check and
// counts as torn, whichever block it is in.
func TestCheckDescriptors(t *testing.T) {
	ctx := context.Background()
	const size = 64 << 20
	path, g := formatTempPod(t, "aquifer-pod-check", size, pod.FormatOptions{ChunkSize: 64 << 10, HostSlots: 2})
	if g.Descs() <= 2*4096 {
		t.Fatalf("geometry %+v: want a table of more than two scan blocks", g)
	}
	wr, err := shm.Open(path, g.Windows(0, true), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wr.Close()
	w, err := pod.Open(ctx, wr, 0, podtest.NewMemCoordinator(), pod.Options{Owner: true})
	if err != nil {
		t.Fatal(err)
	}
	last := g.Chunks - 1 // its descriptors lie in the table's last block
	for _, c := range []int{0, last} {
		if err := w.Acquire(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if _, err := w.Publish(ctx, "k"+string(rune('a'+i)), payload(uint64(i), 1, 5000)); err != nil {
			t.Fatal(err)
		}
	}
	all, err := shm.Open(path, shm.All(size), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	if err := pod.Check(all, true); err != nil {
		t.Fatalf("Check of a sound table: %v", err)
	}
	rep, err := pod.Inspect(all)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Torn != 0 || rep.States[pod.StatePublished] != 3 || rep.States[pod.StateFree] != g.Descs()-3 {
		t.Fatalf("Inspect of a sound table: states %v, torn %d, want 3 published of %d", rep.States, rep.Torn, g.Descs())
	}
	// The generation of a never-written line in the middle of the table,
	// then the token of a published line: each fails its CRC.
	for _, at := range []struct{ desc, word int }{{g.Descs()/2 + 17, 0}, {0, 8}} {
		off := g.DescOffset(at.desc)
		b := make([]byte, 8)
		all.ReadAt(b, off+int64(at.word))
		b[0] ^= 0x5a
		all.WriteAt(b, off+int64(at.word))
		all.Flush(off, 64)
		all.Fence()
	}
	err = pod.Check(all, true)
	if err == nil || !strings.Contains(err.Error(), "2 descriptors fail their checksum (first: 0)") {
		t.Fatalf("Check of a table with two damaged lines: %v", err)
	}
	if err := pod.Check(all, false); err != nil {
		t.Fatalf("Check without descriptors looked at them: %v", err)
	}
	if rep, _ := pod.Inspect(all); rep.Torn != 2 {
		t.Fatalf("Inspect counts %d torn descriptors, want 2", rep.Torn)
	}

	// The daemon's sweeps check the table a slice at a time, wrapping at
	// its end: a slice finds the damage it holds, and only that.
	mid := g.Descs()/2 + 17
	slice := g.Descs()/3 + 1
	for _, tc := range []struct {
		first, n, next int
		bad            string // "" or the error's text
	}{
		{1, mid - 1, mid, ""}, // up to the damaged line
		{mid, 1, mid + 1, "1 descriptors fail their checksum (first: " + itoa(mid) + ")"},
		{mid + 1, slice, mid + 1 + slice, ""},                                 // past it
		{g.Descs() - 5, 5, 0, ""},                                             // the last five
		{g.Descs() - 5, 6, 1, "1 descriptors fail their checksum (first: 0)"}, // wraps to the first
		{g.Descs(), 3, 3, "1 descriptors fail their checksum (first: 0)"},     // out of range: from 0
	} {
		next, err := pod.CheckDescs(all, tc.first, tc.n)
		if tc.bad == "" && err != nil || tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)) {
			t.Fatalf("CheckDescs(%d, %d): %v, want %q", tc.first, tc.n, err, tc.bad)
		}
		if err == nil && next != tc.next {
			t.Fatalf("CheckDescs(%d, %d) goes on at %d, want %d", tc.first, tc.n, next, tc.next)
		}
	}
	// Three slices of a third (and one) cover the table from 0 and wrap
	// into its start: the first holds line 0, the second the middle one,
	// the third line 0 again.
	found, next := 0, 0
	for range 3 {
		from := next
		n, err := pod.CheckDescs(all, next, slice)
		if err != nil {
			found++
			n = (from + slice) % g.Descs() // where it would have gone on
		}
		next = n
	}
	if found != 3 || next != 3*slice-g.Descs() {
		t.Fatalf("three slices found damage %d times and end at %d, want 3 and %d", found, next, 3*slice-g.Descs())
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// BenchmarkCheck is the daemon's periodic full check (every 20th sweep) of a
// table of 64k descriptors (a 256 MiB region of 4 KiB pages).
func BenchmarkCheck(b *testing.B) {
	const size = 256 << 20
	path, _ := formatTempPod(b, "aquifer-pod-checkbench", size, pod.FormatOptions{ChunkSize: 16 << 20, HostSlots: 2})
	r, err := shm.Open(path, shm.All(size), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	for b.Loop() {
		if err := pod.Check(r, true); err != nil {
			b.Fatal(err)
		}
	}
}
