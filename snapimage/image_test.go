package snapimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/wset"
)

const ps = 4096

// memSpec describes a synthetic memory file.
type memSpec struct {
	name     string
	size     int
	zeroFrac float64 // fraction of zero pages
	dupFrac  float64 // fraction of non-zero pages that copy an earlier one
	regions  []Region
}

func makeMem(t testing.TB, s memSpec, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	mem := make([]byte, s.size)
	var prev []byte
	for off := 0; off < s.size; off += ps {
		pg := mem[off:min(off+ps, s.size)]
		x := rng.Float64()
		switch {
		case x < s.zeroFrac:
		case x < s.zeroFrac+(1-s.zeroFrac)*s.dupFrac && prev != nil:
			copy(pg, prev)
		default:
			for i := range pg {
				pg[i] = byte(rng.Uint32())
			}
			// Sparse pages (one non-zero byte) are common in real guests.
			if rng.IntN(4) == 0 {
				clear(pg)
				pg[rng.IntN(len(pg))] = 1 + byte(rng.IntN(255))
			}
			if len(pg) == ps {
				prev = pg
			}
		}
	}
	return mem
}

// makeTrace touches n random pages (zero ones included), in bursts of
// sequential pages like real faults.
func makeTrace(pages int, n int, seed uint64) *wset.Trace {
	rng := rand.New(rand.NewPCG(seed, 9))
	tr := &wset.Trace{PageSize: ps, Source: "synthetic"}
	var tm time.Duration
	for len(tr.Accesses) < n {
		start := rng.IntN(pages)
		for k := 0; k < 1+rng.IntN(8) && len(tr.Accesses) < n; k++ {
			tm += time.Duration(rng.IntN(1000))
			tr.Accesses = append(tr.Accesses, wset.Access{Page: uint64((start + k) % pages), T: tm, Kind: wset.Kind(1 << rng.IntN(3))})
		}
	}
	return tr
}

func writeMem(t testing.TB, mem []byte) string {
	p := filepath.Join(t.TempDir(), "mem")
	if err := os.WriteFile(p, mem, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func isZeroPage(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

func pageOf(mem []byte, i int) []byte {
	p := make([]byte, ps)
	copy(p, mem[i*ps:min((i+1)*ps, len(mem))])
	return p
}

var specs = []memSpec{
	{name: "realistic", size: 16 << 20, zeroFrac: 0.83, dupFrac: 0.2},
	{name: "all-zero", size: 8 << 20, zeroFrac: 1},
	{name: "no-zero", size: 4 << 20, zeroFrac: 0, dupFrac: 0.1},
	{name: "not-2MiB-multiple", size: 3<<20 + 12<<10, zeroFrac: 0.6, dupFrac: 0.1},
	{name: "partial-page", size: 1<<20 + 100, zeroFrac: 0.5},
	{name: "two-region", size: 6 << 20, zeroFrac: 0.8, dupFrac: 0.1,
		regions: []Region{{GuestAddr: 0, Size: 4 << 20}, {GuestAddr: 1 << 32, Size: 2 << 20}}},
	{name: "empty", size: 0},
}

func TestConvertVerify(t *testing.T) {
	for si, s := range specs {
		for _, budget := range []Budget{{}, {Pages: 100}, {Percent: 1}} {
			t.Run(s.name+"/budget="+budget.String(), func(t *testing.T) {
				mem := makeMem(t, s, uint64(si))
				memPath := writeMem(t, mem)
				pages := (len(mem) + ps - 1) / ps
				var tr *wset.Trace
				if pages > 0 {
					tr = makeTrace(pages, pages/10+1, uint64(si))
					tr.MemSize = uint64(len(mem))
				}
				out := filepath.Join(t.TempDir(), "img")
				st, err := Convert(memPath, out, ConvertOptions{Trace: tr, HotBudget: budget, Regions: s.regions, ExtentPages: 16})
				if err != nil {
					t.Fatal(err)
				}
				checkImage(t, mem, tr, budget, s, st, out)
				res, err := Verify(out, memPath, nil)
				if err != nil {
					t.Fatal(err)
				}
				if res.Bytes != uint64(len(mem)) || res.Pages != uint64(pages) {
					t.Fatalf("verify compared %d bytes / %d pages, want %d / %d", res.Bytes, res.Pages, len(mem), pages)
				}
			})
		}
	}
}

// checkImage recomputes the expected layout independently and compares it
// with what the reader reports, then reconstructs every page.
func checkImage(t *testing.T, mem []byte, tr *wset.Trace, budget Budget, s memSpec, st *Stats, out string) {
	want := expectLayout(mem, tr, budget)
	checkStats(t, want, st, out)
	im, f, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	checkOrder(t, im, want)
	checkExtents(t, im, f, want)
	if len(s.regions) > 0 {
		checkRegions(t, im, s)
	}
	checkPages(t, im, f, mem, want)
}

// layoutOracle is what the image of a memory must hold, computed from the
// memory and the trace without the writer's code.
type layoutOracle struct {
	pages       int
	zero        []bool
	nz          int // zero pages
	hot, over   []uint64
	cold        []uint64 // over-budget pages first, then the untouched
	touchedZero int
}

func expectLayout(mem []byte, tr *wset.Trace, budget Budget) layoutOracle {
	var o layoutOracle
	o.pages = (len(mem) + ps - 1) / ps
	o.zero = make([]bool, o.pages)
	for i := range o.zero {
		o.zero[i] = isZeroPage(pageOf(mem, i))
		if o.zero[i] {
			o.nz++
		}
	}
	touched := map[uint64]bool{}
	if tr != nil {
		limit := budget.Limit(uint64(o.pages))
		for _, a := range tr.FirstTouches() {
			touched[a.Page] = true
			switch {
			case o.zero[a.Page]:
				o.touchedZero++
			case uint64(len(o.hot)) < limit:
				o.hot = append(o.hot, a.Page)
			default:
				o.over = append(o.over, a.Page)
			}
		}
	}
	o.cold = append([]uint64(nil), o.over...)
	for i := range o.zero {
		if !o.zero[i] && !touched[uint64(i)] {
			o.cold = append(o.cold, uint64(i))
		}
	}
	return o
}

// checkStats checks the conversion statistics and the image file's size.
func checkStats(t *testing.T, want layoutOracle, st *Stats, out string) {
	t.Helper()
	if st.ZeroPages != uint64(want.nz) || st.HotPages != uint64(len(want.hot)) || st.ColdPages != uint64(len(want.cold)) ||
		st.TouchedZeroPages != uint64(want.touchedZero) || st.OverBudgetPages != uint64(len(want.over)) {
		t.Fatalf("stats %+v; want zero %d hot %d cold %d touched-zero %d over %d", st, want.nz, len(want.hot), len(want.cold), want.touchedZero, len(want.over))
	}
	fi, err := os.Stat(out)
	if err != nil || uint64(fi.Size()) != st.ImageBytes {
		t.Fatalf("image size %v, stats say %d (%v)", fi.Size(), st.ImageBytes, err)
	}
	// Zero pages occupy no bytes: the image is metadata + stored pages.
	if want := alignUp(st.MetadataBytes, SegmentAlign) + (st.HotPages+st.ColdPages)*ps; st.ImageBytes != want {
		t.Fatalf("image %d bytes, want %d", st.ImageBytes, want)
	}
}

// checkOrder checks the hot order (directly and as runs) and every hot and
// cold segment index.
func checkOrder(t *testing.T, im *Image, want layoutOracle) {
	t.Helper()
	if got := im.HotOrder(); !(len(got) == 0 && len(want.hot) == 0) && !reflect.DeepEqual(got, want.hot) {
		t.Fatalf("hot order differs: got %d pages, want %d", len(got), len(want.hot))
	}
	var fromRuns []uint64
	for _, r := range im.HotRuns() {
		if r.Class != Hot || r.Index != uint64(len(fromRuns)) {
			t.Fatalf("hot run %+v out of order", r)
		}
		for k := uint64(0); k < uint64(r.Count); k++ {
			fromRuns = append(fromRuns, r.Page+k)
		}
	}
	if len(fromRuns) != len(want.hot) || (len(want.hot) > 0 && !reflect.DeepEqual(fromRuns, want.hot)) {
		t.Fatal("HotRuns do not spell the hot order")
	}
	for i, pg := range want.cold {
		if got := im.ColdPage(uint64(i)); got != pg {
			t.Fatalf("cold page %d is guest page %d, want %d", i, got, pg)
		}
	}
	for i, pg := range want.hot {
		if got := im.HotPage(uint64(i)); got != pg {
			t.Fatalf("hot page %d is guest page %d, want %d", i, got, pg)
		}
	}
	if im.TouchedColdPages() != uint64(len(want.over)) {
		t.Fatalf("touched cold pages %d, want %d", im.TouchedColdPages(), len(want.over))
	}
}

// checkExtents: touched extents first, none larger than 16 pages, covering
// the cold segment, each verifying against its digest.
func checkExtents(t *testing.T, im *Image, f io.ReaderAt, want layoutOracle) {
	t.Helper()
	var next uint64
	for i, e := range im.ColdExtents() {
		if e.First != next || e.Pages == 0 || e.Pages > 16 || e.Touched != (e.First < uint64(len(want.over))) {
			t.Fatalf("extent %d: %+v", i, e)
		}
		for k := e.First; k < e.First+uint64(e.Pages); k++ {
			if x, ok := im.ExtentOf(k); !ok || x != i {
				t.Fatalf("ExtentOf(%d) = %d %v, want %d", k, x, ok, i)
			}
		}
		next += uint64(e.Pages)
		off, n := im.ExtentRange(e)
		b := make([]byte, n)
		if _, err := im.Segment(f, SecColdSegment).ReadAt(b, int64(off)); err != nil {
			t.Fatal(err)
		}
		if err := im.VerifyExtent(i, b); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := im.ExtentOf(next); ok {
		t.Fatal("ExtentOf beyond the cold segment succeeded")
	}
	if next != uint64(len(want.cold)) {
		t.Fatalf("extents cover %d of %d cold pages", next, len(want.cold))
	}
}

// checkRegions checks the two-region layout of s and guest address
// translation in and between its regions.
func checkRegions(t *testing.T, im *Image, s memSpec) {
	t.Helper()
	if pg, ok := im.GuestToPage(s.regions[1].GuestAddr + 5*ps); !ok || pg != s.regions[0].Size/ps+5 {
		t.Fatalf("GuestToPage in region 1: %d %v", pg, ok)
	}
	if _, ok := im.GuestToPage(s.regions[0].Size); ok {
		t.Fatal("GuestToPage in the gap succeeded")
	}
	if !reflect.DeepEqual(im.Regions(), []Region{{0, 4 << 20, 0}, {1 << 32, 2 << 20, 4 << 20}}) {
		t.Fatalf("regions %+v", im.Regions())
	}
}

// checkPages reads every page through Classify and ReadPage, and the whole
// memory through Reconstruct, against mem.
func checkPages(t *testing.T, im *Image, f io.ReaderAt, mem []byte, want layoutOracle) {
	t.Helper()
	hot, cold := im.Segment(f, SecHotSegment), im.Segment(f, SecColdSegment)
	buf := make([]byte, ps)
	for i := 0; i < want.pages; i++ {
		c, _, ok := im.Classify(uint64(i))
		if !ok || (c == Zero) != want.zero[i] {
			t.Fatalf("page %d classified %v, zero=%v", i, c, want.zero[i])
		}
		if err := im.ReadPage(uint64(i), hot, cold, buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, pageOf(mem, i)) {
			t.Fatalf("page %d differs", i)
		}
	}
	if _, _, ok := im.Classify(uint64(want.pages)); ok {
		t.Fatal("page beyond memory classified")
	}
	var rec bytes.Buffer
	if err := im.Reconstruct(hot, cold, &rec, nil); err != nil || !bytes.Equal(rec.Bytes(), mem) {
		t.Fatalf("reconstruction differs (%v)", err)
	}
}

// The page map of a 4 GiB VM stays small: most of it is long zero and cold
// runs. This builds the map for a sparse 4 GiB layout without a 4 GiB file
// by converting a sparse file (holes read as zero).
func TestPageMapCompact4GiB(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a sparse 4 GiB file; skipped in -short")
	}
	dir := t.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		// tmpfs: the image's fsync does not wait for a disk.
		if dir, err = os.MkdirTemp("/dev/shm", "snapimage-test-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	memPath := filepath.Join(dir, "mem")
	f, err := os.Create(memPath)
	if err != nil {
		t.Fatal(err)
	}
	const size = 4 << 30
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	// 17% non-zero pages in clusters of 64 pages (kernel, page cache, heap).
	rng := rand.New(rand.NewPCG(1, 1))
	chunk := make([]byte, 64*ps)
	for i := range chunk {
		chunk[i] = byte(rng.Uint32()) | 1
	}
	var nonzero int
	for c := 0; c < size/len(chunk); c++ {
		if rng.IntN(100) < 17 {
			if _, err := f.WriteAt(chunk, int64(c*len(chunk))); err != nil {
				t.Fatal(err)
			}
			nonzero += 64
		}
	}
	f.Close()
	tr := makeTrace(size/ps, 60000, 3)
	st, err := Convert(memPath, filepath.Join(dir, "img"), ConvertOptions{Trace: tr})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("4 GiB: %d runs, %d extents, metadata %d bytes (%.3f%% of memory), hot %d cold %d zero %d",
		st.Runs, st.Extents, st.MetadataBytes, 100*float64(st.MetadataBytes)/size, st.HotPages, st.ColdPages, st.ZeroPages)
	if st.HotPages+st.ColdPages != uint64(nonzero) {
		t.Fatalf("stored %d pages, %d non-zero", st.HotPages+st.ColdPages, nonzero)
	}
	// One entry per page would be 1 Mi entries; the run-length map must be
	// far smaller.
	if st.Runs > 100000 {
		t.Fatalf("page map has %d runs for %d pages", st.Runs, size/ps)
	}
}

func TestVerifyDetectsMismatch(t *testing.T) {
	mem := makeMem(t, specs[0], 1)
	memPath := writeMem(t, mem)
	out := filepath.Join(t.TempDir(), "img")
	if _, err := Convert(memPath, out, ConvertOptions{Trace: makeTrace(len(mem)/ps, 500, 1)}); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0, 12345, len(mem) - 1} {
		other := append([]byte(nil), mem...)
		other[off] ^= 0x40
		_, err := Verify(out, writeMem(t, other), nil)
		var me *MismatchError
		if !errors.As(err, &me) || me.Offset != uint64(off) || me.Page != uint64(off/ps) {
			t.Fatalf("changed byte %d: %v", off, err)
		}
	}
	if _, err := Verify(out, writeMem(t, mem[:len(mem)-ps]), nil); err == nil {
		t.Fatal("shorter memory file accepted")
	}
}

func TestConvertErrors(t *testing.T) {
	mem := makeMem(t, specs[3], 1)
	memPath := writeMem(t, mem)
	out := filepath.Join(t.TempDir(), "img")
	bad := []ConvertOptions{
		{Trace: &wset.Trace{PageSize: ps, MemSize: 1}},
		{Trace: &wset.Trace{PageSize: ps, Accesses: []wset.Access{{Page: 1 << 40, Kind: wset.Read}}}},
		{Regions: []Region{{Size: 1 << 20}}},
		{Regions: []Region{{GuestAddr: 1 << 30, Size: 1 << 20}, {GuestAddr: 0, Size: uint64(len(mem)) - 1<<20}}},
		{PageSize: 1000},
	}
	for i, o := range bad {
		if _, err := Convert(memPath, out, o); err == nil {
			t.Errorf("case %d accepted", i)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("failed conversion left an image")
	}
	ents, _ := os.ReadDir(filepath.Dir(out))
	if len(ents) != 0 {
		t.Fatalf("failed conversion left files: %v", ents)
	}
}

func TestParseBudget(t *testing.T) {
	for in, want := range map[string]Budget{"": {}, "all": {}, "100": {Pages: 100}, "5.5%": {Percent: 5.5}, " 10 % ": {Percent: 10}} {
		got, err := ParseBudget(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v", in, got, err)
		}
	}
	for _, in := range []string{"0", "-1", "0%", "101%", "x", "5%%", "NaN%"} {
		if _, err := ParseBudget(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
	if (Budget{Percent: 5.5}).Limit(1000) != 55 || (Budget{Pages: 7}).Limit(1000) != 7 {
		t.Fatal("limit")
	}
}

// smallImage returns a valid image with hot and cold pages and several
// extents, and its memory.
func smallImage(t testing.TB) ([]byte, []byte) {
	s := memSpec{size: 256 << 10, zeroFrac: 0.5, dupFrac: 0.1, regions: []Region{{0, 128 << 10, 0}, {1 << 20, 128 << 10, 0}}}
	mem := makeMem(t, s, 5)
	memPath := writeMem(t, mem)
	out := filepath.Join(t.TempDir(), "img")
	if _, err := Convert(memPath, out, ConvertOptions{Trace: makeTrace(len(mem)/ps, 20, 5), HotBudget: Budget{Pages: 6}, Regions: s.regions, ExtentPages: 4}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b, mem
}

// checkAll opens an image from bytes and runs every check Verify runs.
func checkAll(img, mem []byte) error {
	im, err := Read(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		return err
	}
	r := bytes.NewReader(img)
	if err := im.CheckSegments(r, nil); err != nil {
		return err
	}
	var out bytes.Buffer
	if err := im.Reconstruct(im.Segment(r, SecHotSegment), im.Segment(r, SecColdSegment), &out, nil); err != nil {
		return err
	}
	if mem != nil && !bytes.Equal(out.Bytes(), mem) {
		return errors.New("reconstruction differs")
	}
	return nil
}

// Every structure of an image is protected: flipping any single byte or
// truncating the file at any point is rejected with a FormatError that
// names the structure hit.
func TestCorruptionDetected(t *testing.T) {
	img, mem := smallImage(t)
	if err := checkAll(img, mem); err != nil {
		t.Fatal(err)
	}
	im, err := Read(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	name := func(off uint64) string {
		if off < HeaderSize {
			return "header"
		}
		for id := SecRegions; id < numSections; id++ {
			s := im.Section(id)
			if off >= s.Offset && off < s.Offset+s.Length {
				return id.String()
			}
		}
		return "padding"
	}
	_, hot, cold := im.Counts()
	if hot == 0 || cold == 0 || len(im.ColdExtents()) < 2 {
		t.Fatalf("test image lacks hot (%d) or cold (%d) pages or extents", hot, cold)
	}
	seen := map[string]int{}
	bad := make([]byte, len(img))
	for off := 0; off < len(img); off++ {
		// Every byte of metadata; a sample of segment bytes.
		if off >= int(im.Section(SecHotSegment).Offset) && off%509 != 0 {
			continue
		}
		copy(bad, img)
		bad[off] ^= 0x01
		err := checkAll(bad, mem)
		var fe *FormatError
		if !errors.As(err, &fe) {
			t.Fatalf("flip at byte %d (%s): got %v, want FormatError", off, name(uint64(off)), err)
		}
		want := name(uint64(off))
		// A flip in the header names the header or (when it corrupts a
		// section's stored digest and the header checksum still passed,
		// impossible) the section; a flip in a section names that section
		// or an entry of it.
		if !mentions(fe, want) {
			t.Fatalf("flip at byte %d of %s: error %q does not name it", off, want, err)
		}
		seen[want]++
	}
	for _, w := range []string{"header", "region table", "page map", "hot digest table", "cold digest table", "cold extent table", "hot segment", "cold segment"} {
		if seen[w] == 0 {
			t.Errorf("no flip tested in %s", w)
		}
	}
	for n := 0; n < len(img); n += 97 {
		err := checkAll(img[:n], mem)
		var fe *FormatError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("truncated to %d bytes: %v", n, err)
		}
	}
	if err := checkAll(append(append([]byte(nil), img...), 0), mem); err == nil {
		t.Fatal("trailing byte accepted")
	}
}

func mentions(fe *FormatError, section string) bool {
	w := fe.What
	switch section {
	case "page map":
		return strings.HasPrefix(w, "page map")
	case "region table":
		return strings.HasPrefix(w, "region")
	case "cold extent table":
		return strings.HasPrefix(w, "cold extent")
	case "hot segment":
		return strings.HasPrefix(w, "hot segment")
	case "cold segment":
		return strings.HasPrefix(w, "cold segment") || strings.HasPrefix(w, "cold extent")
	case "padding":
		return strings.HasPrefix(w, "padding")
	}
	return strings.HasPrefix(w, section)
}

// FuzzRead feeds arbitrary bytes to the reader twice: as they are, and
// "resealed" (section digests and header checksum recomputed), so that
// mutations get past the checksums and exercise the structural checks.
// Neither may panic; whatever Read accepts must be safe to use.
func FuzzRead(f *testing.F) {
	img, _ := smallImage(f)
	f.Add(img)
	f.Add(tinyHugeImage(f))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, b := range [][]byte{data, reseal(data)} {
			im, err := Read(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				var fe *FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("error is not a FormatError: %v", err)
				}
				continue
			}
			r := bytes.NewReader(b)
			_ = im.CheckSegments(r, nil)
			im.HotOrder()
			_, hot, cold := im.Counts()
			if hot > 0 {
				im.HotPage(hot - 1)
			}
			if cold > 0 {
				im.ColdPage(cold - 1)
			}
			for _, pg := range []uint64{0, 1, im.Pages() / 2, im.Pages() - 1, im.Pages()} {
				im.Classify(pg)
			}
			im.GuestToPage(1 << 32)
			if im.Pages() < 1<<16 && im.MemSize() < 64<<20 {
				_ = im.Reconstruct(im.Segment(r, SecHotSegment), im.Segment(r, SecColdSegment), io.Discard, nil)
			}
		}
	})
}

func reseal(data []byte) []byte {
	if len(data) < HeaderSize {
		return data
	}
	b := bytes.Clone(data)
	for i := 0; i < int(numSections); i++ {
		o := sectionAt + i*24
		off, n := binary.LittleEndian.Uint64(b[o:]), binary.LittleEndian.Uint64(b[o+8:])
		if off <= uint64(len(b)) && n <= uint64(len(b))-off {
			binary.LittleEndian.PutUint64(b[o+16:], digest(b[off:off+n]))
		}
	}
	binary.LittleEndian.PutUint64(b[checksumAt:], digest(b[:checksumAt]))
	return b
}

// Flipping any bit of the metadata and recomputing every checksum must
// never panic the reader, and must be rejected unless the flip produces
// another well-formed image (a different guest address, say); structural
// fields are checked beyond their checksums.
func TestResealedFlips(t *testing.T) {
	img, mem := smallImage(t)
	im, err := Read(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	metaEnd := int(im.Section(SecColdExtents).Offset + im.Section(SecColdExtents).Length)
	accepted := 0
	for off := 0; off < metaEnd; off++ {
		if (off >= checksumAt && off < HeaderSize) || (off >= sectionAt+16 && off < sectionAt+24*int(numSections) && (off-sectionAt)%24 >= 16) {
			continue // checksums themselves: reseal overwrites them
		}
		for _, bit := range []int{off % 8, (off + 5) % 8} {
			b := bytes.Clone(img)
			b[off] ^= 1 << bit
			if checkAll(reseal(b), mem) == nil {
				accepted++
				gpa := off >= HeaderSize && off < HeaderSize+2*regionSize && (off-HeaderSize)%regionSize < 8
				extentMax := off >= 68 && off < 72 // a larger maximum is still consistent
				if !gpa && !extentMax {
					t.Errorf("flip of bit %d at byte %d (not a guest address or the extent maximum) accepted", bit, off)
				}
			}
		}
	}
	// Only region guest addresses (bits that keep them ascending and
	// aligned) may change without breaking anything checkable.
	if accepted > 2*2*8+2*4 {
		t.Fatalf("%d resealed flips accepted", accepted)
	}
	t.Logf("%d of %d resealed metadata flips accepted (guest addresses, extent maximum)", accepted, metaEnd*2)
}

// Hugepage-backed guests use 2 MiB pages; the image works the same.
func TestConvertVerifyHugePages(t *testing.T) {
	mem := makeMem(t, memSpec{size: 7<<20 + 8192, zeroFrac: 0.3}, 4)
	clear(mem[4<<20 : 6<<20]) // page 2: one all-zero 2 MiB page
	memPath := writeMem(t, mem)
	out := filepath.Join(t.TempDir(), "img")
	tr := &wset.Trace{PageSize: 2 << 20, MemSize: uint64(len(mem)), Accesses: []wset.Access{
		{Page: 3, Kind: wset.Read}, {Page: 1, T: 1, Kind: wset.Write}, {Page: 0, T: 2, Kind: wset.Read}}}
	st, err := Convert(memPath, out, ConvertOptions{Trace: tr, HotBudget: Budget{Pages: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Pages != 4 || st.ZeroPages != 1 || st.HotPages != 2 || st.ColdPages != 1 || st.OverBudgetPages != 1 {
		t.Fatalf("stats %+v", st)
	}
	if _, err := Verify(out, memPath, nil); err != nil {
		t.Fatal(err)
	}
}
