package pager

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/wset"
)

// A staging buffer reused for page after page rebuilds each exactly:
// stored sub-pages copied, every sub-page an earlier page left non-zero
// cleared (and only those touched), whatever order the pages come in.
func TestStageRebuildsEveryPage(t *testing.T) {
	const huge, sub = 2 << 20, 4096
	rng := rand.New(rand.NewPCG(1, 2))
	const pages = 12
	mem := make([]byte, pages*huge)
	for pg := 0; pg < pages; pg++ {
		n := []int{1, 3, 40, 256, 511, 512}[pg%6]
		for _, k := range rng.Perm(huge / sub)[:n] {
			b := mem[pg*huge+k*sub:][:sub]
			for i := range b {
				b[i] = byte(rng.Uint32()) | 1
			}
		}
	}
	dir := t.TempDir()
	memPath, imgPath := filepath.Join(dir, "mem"), filepath.Join(dir, "img")
	if err := os.WriteFile(memPath, mem, 0o644); err != nil {
		t.Fatal(err)
	}
	tr := &wset.Trace{PageSize: huge, MemSize: uint64(len(mem))}
	for _, pg := range rng.Perm(pages)[:8] {
		tr.Accesses = append(tr.Accesses, wset.Access{Page: uint64(pg), Kind: wset.Read})
	}
	if _, err := snapimage.Convert(memPath, imgPath, snapimage.ConvertOptions{Trace: tr}); err != nil {
		t.Fatal(err)
	}
	img, f, err := snapimage.Open(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pool := stagesFor(huge)
	st, err := pool.get()
	if err != nil {
		t.Fatal(err)
	}
	defer pool.put(st)
	for round := 0; round < 3; round++ {
		for _, id := range []snapimage.SectionID{snapimage.SecHotSegment, snapimage.SecColdSegment} {
			sec := img.Section(id)
			seg := make([]byte, sec.Length)
			if _, err := f.ReadAt(seg, int64(sec.Offset)); err != nil {
				t.Fatal(err)
			}
			_, nhot, ncold := img.Counts()
			n := nhot
			if id == snapimage.SecColdSegment {
				n = ncold
			}
			for _, i := range rng.Perm(int(n)) {
				pg := img.HotPage(uint64(i))
				if id == snapimage.SecColdSegment {
					pg = img.ColdPage(uint64(i))
				}
				off, ln := img.Span(id, uint64(i))
				st.fill(img, id, uint64(i), seg[off:off+ln])
				if !bytes.Equal(st.m.B, mem[pg*huge:(pg+1)*huge]) {
					t.Fatalf("round %d: %s page %d (guest page %d) rebuilt wrong", round, id, i, pg)
				}
			}
		}
	}
}

// parallel runs every index once and stops at the first error.
func TestParallel(t *testing.T) {
	seen := make([]int32, 1000)
	if err := parallel(1000, func(_ int, i uint64) error { seen[i]++; return nil }); err != nil {
		t.Fatal(err)
	}
	for i, n := range seen {
		if n != 1 {
			t.Fatalf("index %d ran %d times", i, n)
		}
	}
	boom := os.ErrInvalid
	if err := parallel(1000, func(_ int, i uint64) error {
		if i == 10 {
			return boom
		}
		return nil
	}); err != boom {
		t.Fatalf("parallel returned %v", err)
	}
}
