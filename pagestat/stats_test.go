package pagestat

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/wset"
)

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 7, 63, 64, 65, 4095, 4096, 4097, 70000, 2 << 20} {
		b := make([]byte, n)
		if !IsZero(b) || !isZeroWords(b) {
			t.Fatalf("len %d: zero buffer reported non-zero", n)
		}
		step := 1
		if n > 5000 {
			step = 997
		}
		for i := 0; i < n; i += step {
			b[i] = 0x80
			if IsZero(b) || isZeroWords(b) {
				t.Fatalf("len %d: byte %d set but reported zero", n, i)
			}
			b[i] = 0
		}
		if n > 0 {
			b[n-1] = 1
			if IsZero(b) || isZeroWords(b) {
				t.Fatalf("len %d: last byte set but reported zero", n)
			}
		}
	}
}

// page kinds for building files with known content.
const (
	z = iota // zero page
	r        // unique random page
	a        // copy of content A
	b        // copy of content B
	o        // page that is zero except its last byte
)

func build(t testing.TB, kinds []int, ps int, tail int) (string, []byte) {
	rng := rand.New(rand.NewPCG(1, 2))
	A := make([]byte, ps)
	B := make([]byte, ps)
	for i := range A {
		A[i] = byte(rng.Uint32())
		B[i] = byte(rng.Uint32())
	}
	var buf bytes.Buffer
	for _, k := range kinds {
		p := make([]byte, ps)
		switch k {
		case r:
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
		case a:
			copy(p, A)
		case b:
			copy(p, B)
		case o:
			p[ps-1] = 1
		}
		buf.Write(p)
	}
	if tail > 0 {
		buf.Truncate(buf.Len() - ps + tail)
	}
	path := filepath.Join(t.TempDir(), "mem")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, buf.Bytes()
}

func TestScanKnownContent(t *testing.T) {
	//            0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17 18 19
	kinds := []int{z, z, r, a, z, b, a, a, z, z, z, z, o, r, b, z, z, z, z, z}
	path, _ := build(t, kinds, 4096, 0)
	tr := &wset.Trace{PageSize: 4096, MemSize: 20 * 4096, Source: "t", Accesses: []wset.Access{
		{Page: 3, T: 0, Kind: wset.Read},
		{Page: 0, T: 1, Kind: wset.Write}, // zero page touched
		{Page: 12, T: 2, Kind: wset.Exec}, // non-zero
		{Page: 3, T: 3, Kind: wset.Write}, // again: folded
		{Page: 19, T: 4, Kind: wset.Read}, // zero
		{Page: 13, T: 5, Kind: wset.Read}, // non-zero
	}}
	s, err := ScanFile(path, Options{Trace: tr})
	if err != nil {
		t.Fatal(err)
	}
	want := &Stats{
		Path: path, SizeBytes: 20 * 4096, PageSize: 4096, Pages: 20,
		ZeroPages: 12, NonzeroPages: 8,
		// distinct: r(2), A, B, o, r(13) = 5; duplicates: A twice more, B once more = 3.
		DistinctNonzeroPages: 5, DuplicatePages: 3,
		ZeroFraction: 12.0 / 20,
		ZeroRuns: RunStats{Count: 4, Longest: 5, Histogram: []RunBucket{
			{1, 1, 1, 1}, // page 4
			{2, 3, 1, 2}, // pages 0-1
			{4, 7, 2, 9}, // 8-11, 15-19
		}},
		TraceStats: &TraceStats{TraceSource: "t", TraceAccesses: 6, TouchedPages: 5, HotPages: 3,
			TouchedZeroPages: 2, WrittenPages: 2, ExecPages: 1, ColdPages: 5, HotFraction: 3.0 / 20},
	}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("stats:\n got %+v %+v\nwant %+v %+v", s, s.TraceStats, want, want.TraceStats)
	}
	// ZeroPages agrees with the scan.
	f, _ := os.Open(path)
	defer f.Close()
	var last int64
	bm, zeros, err := ZeroPages(f, 20*4096, 4096, func(d int64) { last = d })
	if err != nil || zeros != 12 || last != 20*4096 {
		t.Fatalf("ZeroPages: %d zeros, progress %d, %v", zeros, last, err)
	}
	for i := uint64(0); i < 20; i++ {
		if bm.Get(i) != (kinds[i] == z) {
			t.Fatalf("ZeroPages bit %d = %v", i, bm.Get(i))
		}
	}
	// The JSON object carries the documented top-level keys.
	js, _ := json.Marshal(s)
	var m map[string]any
	json.Unmarshal(js, &m)
	for _, k := range []string{"pages", "page_size", "zero_pages", "nonzero_pages", "distinct_nonzero_pages", "zero_runs", "hot_pages", "touched_zero_pages"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, js)
		}
	}
	// Without a trace the overlay keys are absent.
	s, err = ScanFile(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	js, _ = json.Marshal(s)
	if bytes.Contains(js, []byte("hot_pages")) {
		t.Errorf("JSON without trace has hot_pages: %s", js)
	}
}

func TestScanEdgeCases(t *testing.T) {
	// Empty file.
	path, _ := build(t, nil, 4096, 0)
	s, err := ScanFile(path, Options{})
	if err != nil || s.Pages != 0 || s.ZeroPages != 0 || s.ZeroRuns.Count != 0 {
		t.Fatalf("empty: %+v %v", s, err)
	}
	// Partial last page that is non-zero only beyond... its present bytes are
	// zero: counts as a zero page.
	path, _ = build(t, []int{r, z}, 4096, 100)
	s, err = ScanFile(path, Options{})
	if err != nil || s.Pages != 2 || s.ZeroPages != 1 || s.SizeBytes != 4096+100 {
		t.Fatalf("partial zero tail: %+v %v", s, err)
	}
	// Partial page of content equal to a full page's prefix with zero tail.
	path, _ = build(t, []int{o, r}, 4096, 100)
	s, err = ScanFile(path, Options{})
	if err != nil || s.Pages != 2 || s.ZeroPages != 0 || s.DistinctNonzeroPages != 2 {
		t.Fatalf("partial: %+v %v", s, err)
	}
	// Many pages crossing chunk boundaries, all duplicates of one content,
	// with 2 MiB pages.
	kinds := make([]int, 9)
	for i := range kinds {
		kinds[i] = a
	}
	kinds[4] = z
	path, _ = build(t, kinds, 2<<20, 0)
	s, err = ScanFile(path, Options{PageSize: 2 << 20})
	if err != nil || s.Pages != 9 || s.ZeroPages != 1 || s.DistinctNonzeroPages != 1 || s.DuplicatePages != 7 {
		t.Fatalf("2 MiB pages: %+v %v", s, err)
	}
	// Trace mismatches are errors.
	if _, err := ScanFile(path, Options{PageSize: 2 << 20, Trace: &wset.Trace{PageSize: 4096}}); err == nil {
		t.Fatal("page size mismatch accepted")
	}
	if _, err := ScanFile(path, Options{PageSize: 2 << 20, Trace: &wset.Trace{PageSize: 2 << 20, MemSize: 1}}); err == nil {
		t.Fatal("memory size mismatch accepted")
	}
	if _, err := ScanFile(path, Options{PageSize: 2 << 20, Trace: &wset.Trace{PageSize: 2 << 20,
		Accesses: []wset.Access{{Page: 9, Kind: wset.Read, T: time.Second}}}}); err == nil {
		t.Fatal("page beyond file accepted")
	}
	if _, err := ScanFile(path, Options{PageSize: 3000}); err == nil {
		t.Fatal("bad page size accepted")
	}
}

// With a hash that collides for every page, distinct counting must still be
// exact: equal digests are confirmed byte by byte.
func TestDistinctExactUnderCollisions(t *testing.T) {
	defer func(h func([]byte) uint64) { pageHash = h }(pageHash)
	pageHash = func(p []byte) uint64 { return uint64(p[0] & 1) }
	kinds := []int{r, a, a, b, r, b, z, o, o, r, a}
	path, _ := build(t, kinds, 4096, 0)
	s, err := ScanFile(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// distinct: 3 unique random pages, A, B, o = 6 of 10 non-zero pages.
	if s.NonzeroPages != 10 || s.DistinctNonzeroPages != 6 || s.DuplicatePages != 4 {
		t.Fatalf("under collisions: %d non-zero, %d distinct", s.NonzeroPages, s.DistinctNonzeroPages)
	}
}
