package snapimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aquifer-pool/aquifer/wset"
)

const huge = 2 << 20

// hugeMem builds guest memory of 2 MiB pages with every case a 2 MiB
// image must handle: a page with every sub-page non-zero, sparse pages (a
// few non-zero 4 KiB sub-pages, one with a single non-zero byte), an
// all-zero page, and a partial last page whose last sub-page is itself
// partial. It returns the memory and, per 2 MiB page, its non-zero
// sub-pages.
func hugeMem(seed uint64) ([]byte, [][]int) {
	rng := rand.New(rand.NewPCG(seed, 3))
	const pages = 6
	mem := make([]byte, (pages-1)*huge+5*ps+100)
	nz := make([][]int, pages)
	fill := func(pg, sub int) {
		lo := pg*huge + sub*ps
		b := mem[lo:min(lo+ps, len(mem))]
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		b[0] |= 1
		nz[pg] = append(nz[pg], sub)
	}
	for sub := 0; sub < huge/ps; sub++ {
		fill(0, sub) // full
	}
	for _, sub := range []int{0, 7, 8, 300, 511} {
		fill(1, sub) // sparse
	}
	// page 2: all zero
	for sub := 0; sub < huge/ps; sub += 3 {
		fill(3, sub) // a third
	}
	mem[4*huge+200*ps+17] = 9 // page 4: one byte
	nz[4] = []int{200}
	fill(5, 1)
	fill(5, 5) // the partial last sub-page (100 bytes in memory)
	return mem, nz
}

// A 2 MiB image classifies zero / hot / cold per 2 MiB page, stores only
// the non-zero 4 KiB sub-pages of each stored page (never a zero 4 KiB
// page), and rebuilds every page byte for byte from any tier's bytes.
func TestHugeImageStoresNoZeroSubPage(t *testing.T) {
	mem, nz := hugeMem(1)
	memPath := writeMem(t, mem)
	// A 4 KiB working set, coarsened by the converter: pages 3, 1 and 5
	// touched in that order (page 2, all zero, too); a budget of 2 sends
	// page 5 to the cold segment's touched extents.
	tr := &wset.Trace{PageSize: ps, MemSize: uint64(len(mem)), Source: "test", Accesses: []wset.Access{
		{Page: 3*512 + 4, Kind: wset.Read}, {Page: 3*512 + 9, T: 1, Kind: wset.Write}, {Page: 2 * 512, T: 2, Kind: wset.Read},
		{Page: 1*512 + 300, T: 3, Kind: wset.Read}, {Page: 5*512 + 1, T: 4, Kind: wset.Write}}}
	out := filepath.Join(t.TempDir(), "img")
	st, err := Convert(memPath, out, ConvertOptions{Trace: tr, PageSize: huge, HotBudget: Budget{Pages: 2}})
	if err != nil {
		t.Fatal(err)
	}
	var stored uint64
	for _, s := range nz {
		stored += uint64(len(s))
	}
	if st.PageSize != huge || st.SubPageSize != ps || st.Pages != 6 || st.ZeroPages != 1 || st.HotPages != 2 || st.ColdPages != 3 ||
		st.OverBudgetPages != 1 || st.TouchedZeroPages != 1 || st.Extents != 3 {
		t.Fatalf("stats %+v", st)
	}
	if st.HotBytes+st.ColdBytes != stored*ps || st.ZeroSubPages != 4*512+6-stored {
		t.Fatalf("segments hold %d+%d bytes and %d zero sub-pages, want %d bytes of %d stored sub-pages", st.HotBytes, st.ColdBytes, st.ZeroSubPages, stored*ps, stored)
	}
	im, f, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if im.Version() != Version || im.SubPageSize() != ps {
		t.Fatalf("version %d sub-page size %d", im.Version(), im.SubPageSize())
	}
	if got := im.HotOrder(); len(got) != 2 || got[0] != 3 || got[1] != 1 {
		t.Fatalf("hot order %v, want [3 1]", got)
	}
	if im.ColdPage(0) != 5 || im.TouchedColdPages() != 1 {
		t.Fatalf("cold page 0 is %d (touched %d), want 5 first", im.ColdPage(0), im.TouchedColdPages())
	}
	// No stored 4 KiB unit is all zero, and the units are the non-zero
	// sub-pages in order.
	for _, id := range []SectionID{SecHotSegment, SecColdSegment} {
		b, _ := readSection(t, f, im.Section(id))
		for off := 0; off < len(b); off += ps {
			if isZeroPage(b[off : off+ps]) {
				t.Fatalf("%s stores a zero 4 KiB sub-page at byte %d", id, off)
			}
		}
	}
	if err := im.CheckSegments(f, nil); err != nil {
		t.Fatal(err)
	}
	checkHugePages(t, im, f, mem, nz)
	if _, err := Verify(out, memPath, nil); err != nil {
		t.Fatal(err)
	}
}

func readSection(t *testing.T, f *os.File, s Section) ([]byte, error) {
	t.Helper()
	b := make([]byte, s.Length)
	if _, err := f.ReadAt(b, int64(s.Offset)); err != nil {
		t.Fatal(err)
	}
	return b, nil
}

// checkHugePages checks every stored page's span, sub-page map, expansion
// (both ways) and digest against mem.
func checkHugePages(t *testing.T, im *Image, f *os.File, mem []byte, nz [][]int) {
	t.Helper()
	want := func(pg uint64) []byte {
		b := make([]byte, huge)
		copy(b, mem[pg*huge:min((pg+1)*huge, uint64(len(mem)))])
		return b
	}
	_, nhot, ncold := im.Counts()
	for _, c := range []struct {
		id SectionID
		n  uint64
	}{{SecHotSegment, nhot}, {SecColdSegment, ncold}} {
		seg, _ := readSection(t, f, im.Section(c.id))
		var next uint64
		for i := uint64(0); i < c.n; i++ {
			pg := im.HotPage(i)
			if c.id == SecColdSegment {
				pg = im.ColdPage(i)
			}
			off, n := im.Span(c.id, i)
			if off != next || n != uint64(len(nz[pg]))*ps {
				t.Fatalf("%s page %d (guest %d): span [%d,+%d), want [%d,+%d)", c.id, i, pg, off, n, next, len(nz[pg])*ps)
			}
			next += n
			m := im.SubPages(c.id, i)
			for k := 0; k < huge/ps; k++ {
				set := m[k/64]&(1<<(k%64)) != 0
				if set != contains(nz[pg], k) {
					t.Fatalf("%s page %d: sub-page %d stored=%v", c.id, i, k, set)
				}
			}
			if im.Full(c.id, i) != (len(nz[pg]) == huge/ps) {
				t.Fatalf("%s page %d: Full=%v", c.id, i, im.Full(c.id, i))
			}
			stored := seg[off : off+n]
			if c.id == SecHotSegment {
				if err := im.VerifyHotPage(i, stored); err != nil {
					t.Fatal(err)
				}
			} else if err := im.VerifyColdPage(i, stored); err != nil {
				t.Fatal(err)
			}
			dst := bytes.Repeat([]byte{0xAA}, huge) // stale bytes must be overwritten
			if err := im.Expand(c.id, i, stored, dst); err != nil || !bytes.Equal(dst, want(pg)) {
				t.Fatalf("%s page %d: Expand differs from guest page %d (%v)", c.id, i, pg, err)
			}
			buf := bytes.Repeat([]byte{0x55}, huge)
			copy(buf, stored)
			im.ExpandInPlace(c.id, i, buf)
			if !bytes.Equal(buf, want(pg)) {
				t.Fatalf("%s page %d: ExpandInPlace differs from guest page %d", c.id, i, pg)
			}
		}
		if next != uint64(len(seg)) {
			t.Fatalf("%s: spans cover %d of %d bytes", c.id, next, len(seg))
		}
	}
	for x, e := range im.ColdExtents() {
		off, n := im.ExtentRange(e)
		b, _ := readSection(t, f, im.Section(SecColdSegment))
		if err := im.VerifyExtent(x, b[off:off+n]); err != nil {
			t.Fatal(err)
		}
	}
	hot, cold := im.Segment(f, SecHotSegment), im.Segment(f, SecColdSegment)
	buf := make([]byte, huge)
	for pg := uint64(0); pg < im.Pages(); pg++ {
		if err := im.ReadPage(pg, hot, cold, buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, want(pg)) {
			t.Fatalf("ReadPage(%d) differs", pg)
		}
	}
}

func contains(s []int, x int) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// 2 MiB images with only cold pages (no recording: Aquifer's rdma-only
// strategy) and with only hot pages read back: each segment's sub-page
// maps are decoded against that segment's own pages.
func TestHugeOneSegmentOnly(t *testing.T) {
	mem, _ := hugeMem(4)
	memPath := writeMem(t, mem)
	all := &wset.Trace{PageSize: huge, MemSize: uint64(len(mem))}
	for pg := uint64(0); pg < 6; pg++ {
		all.Accesses = append(all.Accesses, wset.Access{Page: pg, T: 0, Kind: wset.Read})
	}
	for _, c := range []struct {
		name string
		tr   *wset.Trace
	}{{"cold-only", nil}, {"hot-only", all}} {
		out := filepath.Join(t.TempDir(), "img")
		st, err := Convert(memPath, out, ConvertOptions{Trace: c.tr, PageSize: huge})
		if err != nil {
			t.Fatal(err)
		}
		if (st.HotPages == 0) != (c.tr == nil) || (st.ColdPages == 0) == (c.tr == nil) {
			t.Fatalf("%s: %+v", c.name, st)
		}
		if _, err := Verify(out, memPath, nil); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
}

// smallHugeImage is a valid 2 MiB image with hot and cold pages, sparse and
// full, and several extents.
func smallHugeImage(t testing.TB) ([]byte, []byte) {
	mem, _ := hugeMem(2)
	memPath := writeMem(t, mem)
	tr := &wset.Trace{PageSize: huge, MemSize: uint64(len(mem)), Accesses: []wset.Access{
		{Page: 4, Kind: wset.Read}, {Page: 1, T: 1, Kind: wset.Write}}}
	out := filepath.Join(t.TempDir(), "img")
	if _, err := Convert(memPath, out, ConvertOptions{Trace: tr, HotBudget: Budget{Pages: 1}, ExtentPages: 2}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b, mem
}

// tinyHugeImage is a 2 MiB image of two hot and cold pages holding a few
// sub-pages each: small enough to be a fuzz seed.
func tinyHugeImage(t testing.TB) []byte {
	mem := make([]byte, 2*huge+3*ps)
	for _, off := range []int{0, 5 * ps, huge + 100*ps, 2*huge + ps} {
		mem[off+1] = byte(off>>12) | 1
	}
	memPath := writeMem(t, mem)
	tr := &wset.Trace{PageSize: huge, MemSize: uint64(len(mem)), Accesses: []wset.Access{{Page: 1, Kind: wset.Read}}}
	out := filepath.Join(t.TempDir(), "img")
	if _, err := Convert(memPath, out, ConvertOptions{Trace: tr, ExtentPages: 1}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every byte of a 2 MiB image's metadata, its sub-page maps included, is
// protected: a flipped byte is a FormatError naming the structure.
func TestHugeCorruptionDetected(t *testing.T) {
	img, mem := smallHugeImage(t)
	if err := checkAll(img, mem); err != nil {
		t.Fatal(err)
	}
	im, err := Read(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	hm := im.Section(SecHotSubMaps)
	cm := im.Section(SecColdSubMaps)
	if hm.Length == 0 || cm.Length == 0 {
		t.Fatalf("no sub-page maps: %+v %+v", hm, cm)
	}
	seen := map[string]bool{}
	for off := 0; off < len(img); off++ {
		if off >= int(im.Section(SecHotSegment).Offset) && off%4093 != 0 {
			continue
		}
		bad := bytes.Clone(img)
		bad[off] ^= 0x10
		err := checkAll(bad, mem)
		var fe *FormatError
		if !errors.As(err, &fe) {
			t.Fatalf("flip at byte %d: got %v, want FormatError", off, err)
		}
		for _, s := range []Section{hm, cm} {
			if uint64(off) >= s.Offset && uint64(off) < s.Offset+s.Length {
				if !strings.Contains(fe.What, "sub-page map") {
					t.Fatalf("flip at byte %d of a sub-page map: %v", off, err)
				}
				seen[fe.What] = true
			}
		}
	}
	if len(seen) < 2 {
		t.Fatalf("flips named %v", seen)
	}
	// Resealed (digests recomputed) sub-page map changes are caught by
	// the structure: a map whose population changes no longer matches the
	// segment.
	for _, s := range []Section{hm, cm} {
		for _, bit := range []uint{0, 9, 200} {
			b := bytes.Clone(img)
			b[s.Offset+uint64(bit/8)] ^= 1 << (bit % 8)
			if err := checkAll(reseal(b), mem); err == nil {
				t.Fatalf("resealed flip of bit %d of the sub-page map at byte %d accepted", bit, s.Offset)
			}
		}
	}
}

// Version 1 images (4 KiB pages, written before sub-page storage) are
// still read and rebuilt byte for byte: testdata/v1 holds one written by
// the version 1 writer, and its memory file.
func TestReadsVersion1(t *testing.T) {
	img, err := os.ReadFile("testdata/v1/small.img")
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.ReadFile("testdata/v1/small.mem")
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint32(img[8:]); v != 1 {
		t.Fatalf("fixture has version %d", v)
	}
	im, err := Read(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if im.Version() != 1 || im.SubPageSize() != ps || im.PageSize() != ps {
		t.Fatalf("version %d, sub-page %d, page %d", im.Version(), im.SubPageSize(), im.PageSize())
	}
	_, hot, cold := im.Counts()
	if hot == 0 || cold == 0 || len(im.Regions()) != 2 || len(im.ColdExtents()) < 2 {
		t.Fatalf("fixture lacks hot (%d) / cold (%d) pages, regions or extents", hot, cold)
	}
	if err := checkAll(img, mem); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ip, mp := filepath.Join(dir, "img"), filepath.Join(dir, "mem")
	os.WriteFile(ip, img, 0o644)
	os.WriteFile(mp, mem, 0o644)
	if _, err := Verify(ip, mp, nil); err != nil {
		t.Fatal(err)
	}
	// Flips of a version 1 image are caught like those of a version 2 one.
	for _, off := range []int{9, 16, 100, HeaderSize + 3, int(im.Section(SecPageMap).Offset) + 1} {
		b := bytes.Clone(img)
		b[off] ^= 4
		var fe *FormatError
		if err := checkAll(b, mem); !errors.As(err, &fe) {
			t.Fatalf("flip at %d of the v1 image: %v", off, err)
		}
	}
}

// An image of a newer format version is refused with a message that says
// so, and what to do.
func TestNewerVersionRefused(t *testing.T) {
	img, _ := smallImage(t)
	b := bytes.Clone(img)
	binary.LittleEndian.PutUint32(b[8:], Version+1)
	_, err := Read(bytes.NewReader(reseal(b)), int64(len(b)))
	if err == nil || !strings.Contains(err.Error(), "newer than this build reads") || !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("version %d: %v", Version+1, err)
	}
	binary.LittleEndian.PutUint32(b[8:], 0)
	if _, err := Read(bytes.NewReader(reseal(b)), int64(len(b))); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("version 0: %v", err)
	}
}

// Converting to 2 MiB pages needs a recording at least as fine: a 2 MiB
// working set cannot make a 4 KiB image; a 4 KiB one makes a 2 MiB image
// (coarsened), and without --page-size the recording's page size is used.
func TestHugePageSizeFromRecording(t *testing.T) {
	mem, _ := hugeMem(3)
	memPath := writeMem(t, mem)
	dir := t.TempDir()
	tr2M := &wset.Trace{PageSize: huge, MemSize: uint64(len(mem)), Accesses: []wset.Access{{Page: 1, Kind: wset.Read}}}
	st, err := Convert(memPath, filepath.Join(dir, "a"), ConvertOptions{Trace: tr2M})
	if err != nil || st.PageSize != huge || st.HotPages != 1 {
		t.Fatalf("from a 2 MiB recording: %+v %v", st, err)
	}
	if _, err := Convert(memPath, filepath.Join(dir, "b"), ConvertOptions{Trace: tr2M, PageSize: ps}); err == nil || !strings.Contains(err.Error(), "needs a recording") {
		t.Fatalf("4 KiB image from a 2 MiB recording: %v", err)
	}
	if _, err := Convert(memPath, filepath.Join(dir, "c"), ConvertOptions{PageSize: 3 << 20}); err == nil {
		t.Fatal("3 MiB pages accepted")
	}
	// Regions of a 2 MiB image must be 2 MiB aligned when there are several.
	regs := []Region{{0, 2 << 20, 0}, {1 << 32, uint64(len(mem)) - 2<<20, 0}}
	if _, err := Convert(memPath, filepath.Join(dir, "d"), ConvertOptions{PageSize: huge, Regions: regs}); err == nil || !strings.Contains(err.Error(), "not aligned") {
		t.Fatalf("unaligned second region: %v", err)
	}
}
