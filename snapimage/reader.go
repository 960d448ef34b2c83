package snapimage

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sort"

	"github.com/cespare/xxhash/v2"
)

// FormatError reports a malformed or corrupt image: which structure, at
// which byte offset of the image file, and what is wrong.
type FormatError struct {
	// What names the structure ("header", "page map run 12", "hot segment
	// page 7 (guest page 4242)").
	What string
	// Offset is the byte offset in the image file.
	Offset uint64
	// Err is the problem.
	Err error
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("%s at image byte %d (%#x): %v", e.What, e.Offset, e.Offset, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// ErrDigest is wrapped by FormatError when stored bytes do not match their
// digest.
var ErrDigest = errors.New("digest mismatch")

func ferr(what string, off uint64, format string, args ...any) error {
	return &FormatError{What: what, Offset: off, Err: fmt.Errorf(format, args...)}
}

// Image is the decoded metadata of an image: everything but the two
// segments. It is what a pager keeps in memory; page contents are read from
// segment bytes supplied by the caller.
type Image struct {
	hdr     header
	regions []Region
	runs    []Run // sorted by Page, covering [0, Pages)
	hotDig  []uint64
	coldDig []uint64
	extents []Extent
	// byHot and byCold are indices into runs, sorted by segment index.
	byHot, byCold []int
	// Sub-page maps (version 2 images of pages larger than the sub-page
	// size; nil otherwise): subWords words per stored page, and the prefix
	// sums of stored sub-pages (len pages+1), so stored page i occupies
	// sub-pages [off[i], off[i+1]) of its segment.
	hotMap, coldMap []uint64
	hotOff, coldOff []uint64
}

// PageSize returns the page size in bytes.
func (im *Image) PageSize() uint32 { return im.hdr.pageSize }

// Version returns the image's format version.
func (im *Image) Version() uint32 { return im.hdr.version }

// SubPageSize returns the storage unit of the segments: SubPageSize for a
// version 2 image, the page size for a version 1 image. Segment lengths
// and every stored page's span are multiples of it.
func (im *Image) SubPageSize() uint32 { return im.hdr.subPageSize }

// StoredSubPages returns how many sub-pages the hot and cold segments hold.
func (im *Image) StoredSubPages() (hot, cold uint64) { return im.hdr.hotSub, im.hdr.coldSub }

// MemSize returns the size of the original memory file in bytes.
func (im *Image) MemSize() uint64 { return im.hdr.memSize }

// Pages returns the number of guest pages, ceil(MemSize / PageSize).
func (im *Image) Pages() uint64 { return im.hdr.pages }

// Counts returns the number of zero, hot and cold pages.
func (im *Image) Counts() (zero, hot, cold uint64) {
	return im.hdr.zeroPages, im.hdr.hotPages, im.hdr.coldPages
}

// Regions returns the guest memory regions.
func (im *Image) Regions() []Region { return im.regions }

// Runs returns the page map.
func (im *Image) Runs() []Run { return im.runs }

// Section returns where a section lies in the image file.
func (im *Image) Section(id SectionID) Section { return im.hdr.sections[id] }

// TouchedColdPages returns how many leading cold pages were touched by the
// working set but did not fit the hot budget (their extents come first).
func (im *Image) TouchedColdPages() uint64 { return im.hdr.coldTouched }

// ColdExtents returns the cold extents in cold-segment order.
func (im *Image) ColdExtents() []Extent { return im.extents }

// ExtentOf returns the index of the cold extent holding cold page i, so a
// pager that faults on one cold page can fetch its whole extent; ok is
// false when i is not a cold index.
func (im *Image) ExtentOf(i uint64) (x int, ok bool) {
	if i >= im.hdr.coldPages {
		return 0, false
	}
	return sort.Search(len(im.extents), func(j int) bool { return im.extents[j].First > i }) - 1, true
}

// ExtentRange returns the byte range of extent e relative to the start of
// the cold segment.
func (im *Image) ExtentRange(e Extent) (off, length uint64) {
	off, _ = im.Span(SecColdSegment, e.First)
	lo, n := im.Span(SecColdSegment, e.First+uint64(e.Pages)-1)
	return off, lo + n - off
}

// Span returns where stored page i of segment id (SecHotSegment or
// SecColdSegment) lies in that segment: its byte offset and length. A
// page stored whole is PageSize bytes; a version 2 page larger than the
// sub-page size holds only its non-zero sub-pages.
func (im *Image) Span(id SectionID, i uint64) (off, n uint64) {
	offs := im.hotOff
	if id == SecColdSegment {
		offs = im.coldOff
	}
	if offs == nil {
		ps := uint64(im.hdr.pageSize)
		return i * ps, ps
	}
	s := uint64(im.hdr.subPageSize)
	return offs[i] * s, (offs[i+1] - offs[i]) * s
}

// SubPages returns the bitmap of the sub-pages stored for page i of
// segment id (bit k of word k/64: sub-page k, the bytes [k·S, (k+1)·S) of
// the page), in order in the stored bytes; nil when pages are stored whole.
func (im *Image) SubPages(id SectionID, i uint64) []uint64 {
	m := im.hotMap
	if id == SecColdSegment {
		m = im.coldMap
	}
	if m == nil {
		return nil
	}
	w := uint64(im.hdr.subWords())
	return m[i*w : (i+1)*w]
}

// Full reports whether stored page i of segment id holds every byte of the
// page, so its stored bytes can be installed as they are.
func (im *Image) Full(id SectionID, i uint64) bool {
	_, n := im.Span(id, i)
	return n == uint64(im.hdr.pageSize)
}

// Expand writes page i of segment id, PageSize bytes, into dst from its
// stored bytes (Span bytes of the segment): stored sub-pages at their
// places, zeros in between. stored and dst may not overlap (ExpandInPlace
// rebuilds a page inside one buffer).
func (im *Image) Expand(id SectionID, i uint64, stored, dst []byte) error {
	ps := uint64(im.hdr.pageSize)
	_, n := im.Span(id, i)
	if uint64(len(stored)) != n || uint64(len(dst)) < ps {
		return fmt.Errorf("expanding %s page %d: %d stored bytes (want %d) into %d bytes (want %d)", id, i, len(stored), n, len(dst), ps)
	}
	m := im.SubPages(id, i)
	if m == nil {
		copy(dst, stored)
		return nil
	}
	s := uint64(im.hdr.subPageSize)
	k := uint64(0)
	for b := uint64(0); b < ps/s; b++ {
		d := dst[b*s : (b+1)*s]
		if m[b/64]&(1<<(b%64)) != 0 {
			copy(d, stored[k*s:(k+1)*s])
			k++
		} else {
			clear(d)
		}
	}
	return nil
}

// ExpandInPlace rebuilds page i of segment id in buf (PageSize bytes) whose
// first Span bytes hold its stored bytes.
func (im *Image) ExpandInPlace(id SectionID, i uint64, buf []byte) {
	m := im.SubPages(id, i)
	if m == nil {
		return
	}
	ps, s := uint64(im.hdr.pageSize), uint64(im.hdr.subPageSize)
	_, n := im.Span(id, i)
	k := n / s // stored sub-pages; moved back to front
	for b := ps/s - 1; ; b-- {
		d := buf[b*s : (b+1)*s]
		if m[b/64]&(1<<(b%64)) != 0 {
			k--
			if k != b {
				copy(d, buf[k*s:(k+1)*s])
			}
		} else {
			clear(d)
		}
		if b == 0 {
			break
		}
	}
}

// HotDigest and ColdDigest return the stored xxhash64 of a segment page.
func (im *Image) HotDigest(i uint64) uint64  { return im.hotDig[i] }
func (im *Image) ColdDigest(i uint64) uint64 { return im.coldDig[i] }

// GuestToPage translates a guest physical address to a page index of the
// memory file through the region table.
func (im *Image) GuestToPage(gpa uint64) (uint64, bool) {
	for _, r := range im.regions {
		if gpa >= r.GuestAddr && gpa-r.GuestAddr < r.Size {
			return (r.FileOffset + gpa - r.GuestAddr) / uint64(im.hdr.pageSize), true
		}
	}
	return 0, false
}

// Classify returns what guest page page is: Zero, or Hot or Cold with its
// index in that segment. ok is false for a page beyond the memory.
func (im *Image) Classify(page uint64) (c Class, index uint64, ok bool) {
	if page >= im.hdr.pages {
		return 0, 0, false
	}
	i := sort.Search(len(im.runs), func(i int) bool { return im.runs[i].Page > page }) - 1
	r := im.runs[i]
	if r.Class == Zero {
		return Zero, 0, true
	}
	return r.Class, r.Index + (page - r.Page), true
}

// segPage returns the guest page stored at index i of a segment.
func (im *Image) segPage(by []int, i uint64) uint64 {
	j := sort.Search(len(by), func(j int) bool { return im.runs[by[j]].Index > i }) - 1
	r := im.runs[by[j]]
	return r.Page + (i - r.Index)
}

// HotPage returns the guest page at hot index i (i < hot pages).
func (im *Image) HotPage(i uint64) uint64 { return im.segPage(im.byHot, i) }

// ColdPage returns the guest page at cold index i (i < cold pages).
func (im *Image) ColdPage(i uint64) uint64 { return im.segPage(im.byCold, i) }

// HotOrder returns the hot pages in hot-segment (first-touch) order: the
// order of the pre-install.
func (im *Image) HotOrder() []uint64 {
	out := make([]uint64, 0, im.hdr.hotPages)
	for _, j := range im.byHot {
		r := im.runs[j]
		for k := uint64(0); k < uint64(r.Count); k++ {
			out = append(out, r.Page+k)
		}
	}
	return out
}

// HotRuns returns the hot runs of the page map in hot-index order. Each is
// a stretch of consecutive guest pages stored consecutively in the hot
// segment, so a pre-install can copy one run with one UFFDIO_COPY.
func (im *Image) HotRuns() []Run {
	out := make([]Run, len(im.byHot))
	for i, j := range im.byHot {
		out[i] = im.runs[j]
	}
	return out
}

// Open reads and checks the metadata of the image file at path. The
// returned file stays open for segment reads (Segment); close it when done.
func Open(path string) (*Image, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	im, err := Read(f, st.Size())
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return im, f, nil
}

// Segment returns a reader of one segment's bytes inside the image file r,
// with offsets relative to the segment start (what the Read*Page methods
// expect).
func (im *Image) Segment(r io.ReaderAt, id SectionID) *io.SectionReader {
	s := im.hdr.sections[id]
	return io.NewSectionReader(r, int64(s.Offset), int64(s.Length))
}

// Read decodes and checks the header and metadata sections of an image of
// size bytes read through r: magic, version, header checksum, section
// layout (in order, aligned, inside the file, file ends at the cold
// segment), every metadata section's digest and internal consistency (the
// page map covers every page once and maps hot and cold indices one to
// one). Segment contents are checked page by page when read
// (ReadHotPage...) or all at once by CheckSegments. Read never panics and
// allocates no more than the file's size justifies.
func Read(r io.ReaderAt, size int64) (*Image, error) {
	hb := make([]byte, HeaderSize)
	if n, err := r.ReadAt(hb, 0); n < HeaderSize {
		return nil, ferr("header", uint64(n), "truncated: image has %d bytes, header needs %d (%v)", max(size, 0), HeaderSize, err)
	}
	im := &Image{}
	h := &im.hdr
	var err error
	if *h, err = decodeHeader(hb); err != nil {
		return nil, err
	}
	if err := h.checkCounts(); err != nil {
		return nil, err
	}
	if err := h.checkLayout(size); err != nil {
		return nil, err
	}
	meta, err := h.readMetadata(r)
	if err != nil {
		return nil, err
	}
	sec := func(id SectionID) []byte {
		s := h.sections[id]
		return meta[s.Offset-HeaderSize : s.Offset-HeaderSize+s.Length]
	}
	if err := im.decodeRegions(sec(SecRegions)); err != nil {
		return nil, err
	}
	if err := im.decodeRuns(sec(SecPageMap)); err != nil {
		return nil, err
	}
	im.hotDig = getDigests(sec(SecHotDigests))
	im.coldDig = getDigests(sec(SecColdDigests))
	if err := im.decodeSubMaps(SecHotSubMaps, sec(SecHotSubMaps)); err != nil {
		return nil, err
	}
	if err := im.decodeSubMaps(SecColdSubMaps, sec(SecColdSubMaps)); err != nil {
		return nil, err
	}
	if err := im.decodeExtents(sec(SecColdExtents)); err != nil {
		return nil, err
	}
	return im, nil
}

// checkCounts checks the header's page size and counts against each other.
func (h *header) checkCounts() error {
	ps := uint64(h.pageSize)
	if ps < 4096 || ps&(ps-1) != 0 || ps > 1<<30 {
		return ferr("header page size", 16, "%d is not a power of two in [4096, 1 GiB]", ps)
	}
	if h.version >= 2 && h.subPageSize != SubPageSize {
		return ferr("header sub-page size", subPageAt, "%d, want %d", h.subPageSize, SubPageSize)
	}
	if h.pages != (h.memSize+ps-1)/ps {
		return ferr("header page count", 32, "%d pages for %d bytes of %d-byte pages", h.pages, h.memSize, ps)
	}
	if h.zeroPages > h.pages || h.hotPages > h.pages-h.zeroPages || h.hotPages+h.coldPages+h.zeroPages != h.pages {
		return ferr("header page counts", 40, "zero %d + hot %d + cold %d != %d pages", h.zeroPages, h.hotPages, h.coldPages, h.pages)
	}
	if h.coldTouched > h.coldPages {
		return ferr("header touched cold pages", 88, "%d of %d cold pages", h.coldTouched, h.coldPages)
	}
	if h.extentPages == 0 {
		return ferr("header extent size", 68, "zero pages per extent")
	}
	// Every stored page holds at least one sub-page and at most all.
	per := h.subPerPage()
	if h.hotSub < h.hotPages || h.hotSub/per > h.hotPages || (h.hotSub > h.hotPages*per) {
		return ferr("header hot sub-pages", hotSubAt, "%d sub-pages for %d stored pages of %d", h.hotSub, h.hotPages, per)
	}
	if h.coldSub < h.coldPages || h.coldSub/per > h.coldPages || (h.coldSub > h.coldPages*per) {
		return ferr("header cold sub-pages", coldSubAt, "%d sub-pages for %d stored pages of %d", h.coldSub, h.coldPages, per)
	}
	return nil
}

// checkLayout checks the section table: every section as long as the
// header's counts make it, in order, the segments aligned, and the last one
// ending at the end of a file of size bytes.
func (h *header) checkLayout(size int64) error {
	sub, mb := uint64(h.subPageSize), uint64(h.subWords()*8)
	lens := [numSections]uint64{
		uint64(h.regions) * regionSize, h.runs * runSize, h.hotPages * digestSize,
		h.coldPages * digestSize, h.extents * extentSize, h.hotPages * mb, h.coldPages * mb,
		h.hotSub * sub, h.coldSub * sub,
	}
	if h.runs > h.pages || h.extents > h.coldPages || uint64(h.regions) > h.pages+1 {
		return ferr("header counts", 64, "%d regions, %d runs, %d extents for %d pages", h.regions, h.runs, h.extents, h.pages)
	}
	end := uint64(HeaderSize)
	for i, s := range h.sections {
		id := SectionID(i)
		at := uint64(sectionAt + i*24)
		if h.version == 1 && id >= SecHotSegment {
			at = uint64(sectionAt + (i-2)*24) // version 1 has no sub-page maps
		}
		if s.Length != lens[i] {
			return ferr("header: "+id.String()+" length", at+8, "%d, want %d from the header counts", s.Length, lens[i])
		}
		want := end
		if id >= SecHotSegment {
			want = alignUp(end, SegmentAlign)
		}
		if s.Offset != want {
			return ferr("header: "+id.String()+" offset", at, "%d, want %d", s.Offset, want)
		}
		end = s.Offset + s.Length
	}
	if size < 0 || uint64(size) != end {
		what := "image"
		if uint64(max(size, 0)) < end {
			what = "image (truncated)"
		}
		return ferr(what, uint64(max(size, 0)), "file has %d bytes, sections end at %d", size, end)
	}
	return nil
}

// readMetadata reads the metadata sections (from the end of the header to
// the end of the cold extents) and checks each one's digest, and that the
// padding before the hot segment, which no digest covers, is zero.
func (h *header) readMetadata(r io.ReaderAt) ([]byte, error) {
	metaEnd := h.metaEnd()
	meta := make([]byte, metaEnd-HeaderSize)
	if n, err := r.ReadAt(meta, HeaderSize); n != len(meta) {
		return nil, ferr("metadata", HeaderSize+uint64(n), "short read: %v", err)
	}
	for id := SecRegions; id <= SecColdSubMaps; id++ {
		s := h.sections[id]
		if got := digest(meta[s.Offset-HeaderSize : s.Offset-HeaderSize+s.Length]); got != s.Digest {
			return nil, &FormatError{id.String(), s.Offset, fmt.Errorf("%w: computed %#016x, stored %#016x in the header", ErrDigest, got, s.Digest)}
		}
	}
	if gap := h.sections[SecHotSegment].Offset - metaEnd; gap > 0 {
		pad := make([]byte, gap)
		if n, err := r.ReadAt(pad, int64(metaEnd)); uint64(n) != gap {
			return nil, ferr("padding before the hot segment", metaEnd+uint64(n), "short read: %v", err)
		}
		for i, c := range pad {
			if c != 0 {
				return nil, ferr("padding before the hot segment", metaEnd+uint64(i), "byte %#x, want 0", c)
			}
		}
	}
	return meta, nil
}

// metaEnd is the end of the metadata sections (header to cold sub-page
// maps): what a host keeps of an image.
func (h *header) metaEnd() uint64 {
	return h.sections[SecColdSubMaps].Offset + h.sections[SecColdSubMaps].Length
}

// MetadataBytes is the size of the image's metadata: everything before the
// hot segment's alignment padding.
func (im *Image) MetadataBytes() uint64 { return im.hdr.metaEnd() }

// decodeSubMaps decodes the sub-page maps of one segment: every stored
// page has at least one sub-page, no bit beyond the page or the memory, and
// the maps account for exactly the sub-pages the header says the segment
// holds.
func (im *Image) decodeSubMaps(id SectionID, b []byte) error {
	h := &im.hdr
	w := h.subWords()
	if w == 0 {
		return nil
	}
	seg, want, name, by := SecHotSegment, h.hotSub, "hot", im.byHot
	if id == SecColdSubMaps {
		seg, want, name, by = SecColdSegment, h.coldSub, "cold", im.byCold
	}
	n := len(b) / (w * 8)
	m := make([]uint64, n*w)
	offs := make([]uint64, n+1)
	per := h.subPerPage()
	base := h.sections[id].Offset
	for i := 0; i < n; i++ {
		at := base + uint64(i*w*8)
		pg := im.segPage(by, uint64(i))
		// Sub-pages that lie beyond the memory are never stored.
		valid := min(per, (h.memSize-pg*uint64(h.pageSize)+uint64(h.subPageSize)-1)/uint64(h.subPageSize))
		cnt := uint64(0)
		for j := 0; j < w; j++ {
			x := binary.LittleEndian.Uint64(b[(i*w+j)*8:])
			m[i*w+j] = x
			cnt += uint64(bits.OnesCount64(x))
			lo := uint64(j * 64)
			if valid < lo+64 && x>>(max(valid, lo)-lo) != 0 {
				return ferr(fmt.Sprintf("%s sub-page map of %s page %d (guest page %d)", name, name, i, pg), at+uint64(j*8), "sub-pages beyond the page's %d in memory are marked stored", valid)
			}
		}
		if cnt == 0 {
			return ferr(fmt.Sprintf("%s sub-page map of %s page %d (guest page %d)", name, name, i, pg), at, "a stored page without any stored sub-page")
		}
		offs[i+1] = offs[i] + cnt
	}
	if offs[n] != want {
		return ferr(id.String(), base, "maps %d stored sub-pages, the header says the %s segment holds %d", offs[n], name, want)
	}
	if seg == SecHotSegment {
		im.hotMap, im.hotOff = m, offs
	} else {
		im.coldMap, im.coldOff = m, offs
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func getDigests(b []byte) []uint64 {
	d := make([]uint64, len(b)/8)
	for i := range d {
		d[i] = binary.LittleEndian.Uint64(b[i*8:])
	}
	return d
}

func (im *Image) decodeRegions(b []byte) error {
	base := im.hdr.sections[SecRegions].Offset
	var off uint64
	for i := 0; i < len(b)/regionSize; i++ {
		r := getRegion(b[i*regionSize:])
		what := fmt.Sprintf("region %d", i)
		at := base + uint64(i*regionSize)
		if r.Size == 0 || r.FileOffset != off || r.Size > im.hdr.memSize-off {
			return ferr(what, at, "size %d at file offset %d does not continue the regions before it (expected offset %d, memory %d bytes)", r.Size, r.FileOffset, off, im.hdr.memSize)
		}
		if r.GuestAddr+r.Size < r.GuestAddr {
			return ferr(what, at, "guest range %#x+%#x wraps", r.GuestAddr, r.Size)
		}
		if i > 0 {
			p := im.regions[i-1]
			if r.GuestAddr < p.GuestAddr+p.Size {
				return ferr(what, at, "guest address %#x overlaps or precedes region %d", r.GuestAddr, i-1)
			}
		}
		im.regions = append(im.regions, r)
		off += r.Size
	}
	if off != im.hdr.memSize {
		return ferr("region table", base, "regions cover %d bytes, memory has %d", off, im.hdr.memSize)
	}
	return nil
}

func (im *Image) decodeRuns(b []byte) error {
	h := &im.hdr
	base := h.sections[SecPageMap].Offset
	n := len(b) / runSize
	im.runs = make([]Run, n)
	var next, zero uint64
	for i := range im.runs {
		e := b[i*runSize:]
		r := Run{Page: binary.LittleEndian.Uint64(e[0:]), Index: binary.LittleEndian.Uint64(e[8:]), Count: binary.LittleEndian.Uint32(e[16:]), Class: Class(e[20])}
		what := fmt.Sprintf("page map run %d", i)
		at := base + uint64(i*runSize)
		if e[21]|e[22]|e[23] != 0 {
			return ferr(what, at+21, "reserved bytes not zero")
		}
		if r.Page != next || r.Count == 0 || uint64(r.Count) > h.pages-next {
			return ferr(what, at, "pages [%d, +%d) do not continue the map at page %d of %d", r.Page, r.Count, next, h.pages)
		}
		switch r.Class {
		case Zero:
			if r.Index != 0 {
				return ferr(what, at+8, "zero run with index %d", r.Index)
			}
			zero += uint64(r.Count)
		case Hot:
			if r.Index > h.hotPages || uint64(r.Count) > h.hotPages-r.Index {
				return ferr(what, at+8, "hot indices [%d, +%d) beyond %d hot pages", r.Index, r.Count, h.hotPages)
			}
			im.byHot = append(im.byHot, i)
		case Cold:
			if r.Index > h.coldPages || uint64(r.Count) > h.coldPages-r.Index {
				return ferr(what, at+8, "cold indices [%d, +%d) beyond %d cold pages", r.Index, r.Count, h.coldPages)
			}
			im.byCold = append(im.byCold, i)
		default:
			return ferr(what, at+20, "unknown class %d", r.Class)
		}
		im.runs[i] = r
		next += uint64(r.Count)
	}
	if next != h.pages {
		return ferr("page map", base+uint64(len(b)), "covers %d of %d pages", next, h.pages)
	}
	if zero != h.zeroPages {
		return ferr("page map", base, "%d zero pages, header says %d", zero, h.zeroPages)
	}
	// Segment indices must be a permutation: sorted by index, the runs of
	// each class tile [0, count) without gap or overlap.
	for _, c := range []struct {
		name  string
		by    []int
		count uint64
	}{{"hot", im.byHot, h.hotPages}, {"cold", im.byCold, h.coldPages}} {
		sort.Slice(c.by, func(x, y int) bool { return im.runs[c.by[x]].Index < im.runs[c.by[y]].Index })
		var want uint64
		for _, j := range c.by {
			r := im.runs[j]
			if r.Index != want {
				return ferr(fmt.Sprintf("page map run %d", j), base+uint64(j*runSize)+8, "%s index %d: indices [%d, %d) are mapped twice or not at all", c.name, r.Index, min(want, r.Index), max(want, r.Index))
			}
			want += uint64(r.Count)
		}
		if want != c.count {
			return ferr("page map", base, "maps %d %s pages, header says %d", want, c.name, c.count)
		}
	}
	return nil
}

func (im *Image) decodeExtents(b []byte) error {
	base := im.hdr.sections[SecColdExtents].Offset
	var next uint64
	for i := 0; i < len(b)/extentSize; i++ {
		e := b[i*extentSize:]
		fl := binary.LittleEndian.Uint32(e[12:])
		x := Extent{First: binary.LittleEndian.Uint64(e[0:]), Pages: binary.LittleEndian.Uint32(e[8:]), Touched: fl&extentTouched != 0, Digest: binary.LittleEndian.Uint64(e[16:])}
		what := fmt.Sprintf("cold extent %d", i)
		at := base + uint64(i*extentSize)
		if fl&^extentTouched != 0 {
			return ferr(what, at+12, "unknown flags %#x", fl)
		}
		if x.First != next || x.Pages == 0 || x.Pages > im.hdr.extentPages || uint64(x.Pages) > im.hdr.coldPages-next {
			return ferr(what, at, "cold pages [%d, +%d) do not continue the extents at %d of %d (max %d per extent)", x.First, x.Pages, next, im.hdr.coldPages, im.hdr.extentPages)
		}
		// Touched extents tile exactly the leading touched cold pages.
		if x.Touched != (next < im.hdr.coldTouched) || (x.Touched && uint64(x.Pages) > im.hdr.coldTouched-next) {
			return ferr(what, at+12, "touched flag %v for cold pages [%d, +%d), header says the first %d cold pages are touched", x.Touched, x.First, x.Pages, im.hdr.coldTouched)
		}
		im.extents = append(im.extents, x)
		next += uint64(x.Pages)
	}
	if next != im.hdr.coldPages {
		return ferr("cold extent table", base, "extents cover %d of %d cold pages", next, im.hdr.coldPages)
	}
	return nil
}

// segment page helpers

func (im *Image) pageAt(id SectionID, i uint64) (what string, at uint64) {
	var pg uint64
	if id == SecHotSegment {
		pg = im.HotPage(i)
	} else {
		pg = im.ColdPage(i)
	}
	off, _ := im.Span(id, i)
	return fmt.Sprintf("%s page %d (guest page %d)", id, i, pg), im.hdr.sections[id].Offset + off
}

func (im *Image) readSegPage(id SectionID, seg io.ReaderAt, i uint64, dst []byte, digs []uint64) error {
	ps := uint64(im.hdr.pageSize)
	if i >= uint64(len(digs)) {
		return fmt.Errorf("%s index %d out of range (%d pages)", id, i, len(digs))
	}
	if uint64(len(dst)) < ps {
		return fmt.Errorf("destination of %d bytes for a %d-byte page", len(dst), ps)
	}
	off, n := im.Span(id, i)
	b := dst[:n]
	if m, err := seg.ReadAt(b, int64(off)); uint64(m) != n {
		what, at := im.pageAt(id, i)
		return ferr(what, at+uint64(m), "short read (%d of %d bytes): %v", m, n, err)
	}
	if err := im.checkPage(id, i, b, digs); err != nil {
		return err
	}
	im.ExpandInPlace(id, i, dst[:ps])
	return nil
}

func (im *Image) checkPage(id SectionID, i uint64, b []byte, digs []uint64) error {
	if _, n := im.Span(id, i); uint64(len(b)) != n {
		what, at := im.pageAt(id, i)
		return ferr(what, at, "%d stored bytes, want %d", len(b), n)
	}
	if got := digest(b); got != digs[i] {
		what, at := im.pageAt(id, i)
		return &FormatError{what, at, fmt.Errorf("%w: computed %#016x, stored %#016x", ErrDigest, got, digs[i])}
	}
	return nil
}

// ReadHotPage reads hot page i from the hot segment bytes seg (offsets
// relative to the segment start, from any tier) into dst (PageSize bytes),
// verifies its digest and rebuilds its zero sub-pages.
func (im *Image) ReadHotPage(seg io.ReaderAt, i uint64, dst []byte) error {
	return im.readSegPage(SecHotSegment, seg, i, dst, im.hotDig)
}

// ReadColdPage reads cold page i from the cold segment bytes seg into dst
// and verifies its digest.
func (im *Image) ReadColdPage(seg io.ReaderAt, i uint64, dst []byte) error {
	return im.readSegPage(SecColdSegment, seg, i, dst, im.coldDig)
}

// VerifyHotPage and VerifyColdPage check a page's stored bytes b (its Span
// of the segment) obtained elsewhere (for example an RDMA read) against the
// stored digest.
func (im *Image) VerifyHotPage(i uint64, b []byte) error {
	if i >= uint64(len(im.hotDig)) {
		return fmt.Errorf("hot index %d out of range", i)
	}
	return im.checkPage(SecHotSegment, i, b, im.hotDig)
}

func (im *Image) VerifyColdPage(i uint64, b []byte) error {
	if i >= uint64(len(im.coldDig)) {
		return fmt.Errorf("cold index %d out of range", i)
	}
	return im.checkPage(SecColdSegment, i, b, im.coldDig)
}

// VerifyExtent checks the bytes of cold extent x (ExtentRange bytes of the
// cold segment) against the extent digest.
func (im *Image) VerifyExtent(x int, b []byte) error {
	if x < 0 || x >= len(im.extents) {
		return fmt.Errorf("cold extent %d out of range", x)
	}
	e := im.extents[x]
	off, n := im.ExtentRange(e)
	at := im.hdr.sections[SecColdSegment].Offset + off
	if uint64(len(b)) != n {
		return ferr(fmt.Sprintf("cold extent %d", x), at, "%d bytes, want %d", len(b), n)
	}
	if got := digest(b); got != e.Digest {
		return &FormatError{fmt.Sprintf("cold extent %d (cold pages %d..%d)", x, e.First, e.First+uint64(e.Pages)-1), at, fmt.Errorf("%w: computed %#016x, stored %#016x", ErrDigest, got, e.Digest)}
	}
	return nil
}

// ReadPage reconstructs guest page page into dst (PageSize bytes) from the
// hot and cold segment bytes. The bytes of a partial last page beyond
// MemSize are zero.
func (im *Image) ReadPage(page uint64, hot, cold io.ReaderAt, dst []byte) error {
	c, i, ok := im.Classify(page)
	if !ok {
		return fmt.Errorf("page %d beyond the memory's %d pages", page, im.hdr.pages)
	}
	switch c {
	case Hot:
		return im.ReadHotPage(hot, i, dst)
	case Cold:
		return im.ReadColdPage(cold, i, dst)
	}
	if uint64(len(dst)) < uint64(im.hdr.pageSize) {
		return fmt.Errorf("destination of %d bytes for a %d-byte page", len(dst), im.hdr.pageSize)
	}
	clear(dst[:im.hdr.pageSize])
	return nil
}

// CheckSegments reads both segments of the image file r in full and checks
// every page digest, every extent digest and both segment digests. The
// first error names the segment, index, guest page and image offset.
func (im *Image) CheckSegments(r io.ReaderAt, progress func(done int64)) error {
	// A stored page is at most a page and never longer than its segment.
	longest := max(im.hdr.sections[SecHotSegment].Length, im.hdr.sections[SecColdSegment].Length)
	buf := make([]byte, min(uint64(im.hdr.pageSize), longest))
	var done int64
	for _, id := range []SectionID{SecHotSegment, SecColdSegment} {
		s := im.hdr.sections[id]
		digs, pages := im.hotDig, im.hdr.hotPages
		if id == SecColdSegment {
			digs, pages = im.coldDig, im.hdr.coldPages
		}
		br := bufio.NewReaderSize(io.NewSectionReader(r, int64(s.Offset), int64(s.Length)), 1<<20)
		sd := xxhash.New()
		ext, extDig, extLeft := 0, xxhash.New(), uint64(0)
		if id == SecColdSegment && len(im.extents) > 0 {
			extLeft = uint64(im.extents[0].Pages)
		}
		for i := uint64(0); i < pages; i++ {
			off, n := im.Span(id, i)
			pg := buf[:n]
			if m, err := io.ReadFull(br, pg); uint64(m) != n {
				return ferr(id.String()+" (truncated)", s.Offset+off+uint64(m), "short read: %v", err)
			}
			sd.Write(pg)
			if err := im.checkPage(id, i, pg, digs); err != nil {
				return err
			}
			if id == SecColdSegment {
				extDig.Write(pg)
				if extLeft--; extLeft == 0 {
					e := im.extents[ext]
					if got := extDig.Sum64(); got != e.Digest {
						o, _ := im.ExtentRange(e)
						return &FormatError{fmt.Sprintf("cold extent %d", ext), s.Offset + o, fmt.Errorf("%w: computed %#016x, stored %#016x", ErrDigest, got, e.Digest)}
					}
					ext++
					extDig.Reset()
					if ext < len(im.extents) {
						extLeft = uint64(im.extents[ext].Pages)
					}
				}
			}
			done += int64(n)
			if progress != nil && (i%256 == 255 || i == pages-1) {
				progress(done)
			}
		}
		if got := sd.Sum64(); got != s.Digest {
			return &FormatError{id.String(), s.Offset, fmt.Errorf("%w over the whole segment: computed %#016x, stored %#016x", ErrDigest, got, s.Digest)}
		}
	}
	return nil
}
