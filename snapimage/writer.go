package snapimage

import (
	"bufio"
	"fmt"
	"io"
	"os"

	"github.com/aquifer-pool/aquifer/internal/atomicfile"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/pagestat"
	"github.com/aquifer-pool/aquifer/wset"
	"github.com/cespare/xxhash/v2"
)

func digest(b []byte) uint64 { return xxhash.Sum64(b) }

// ConvertOptions control Convert.
type ConvertOptions struct {
	// Trace is the working set; nil makes an image with no hot pages.
	Trace *wset.Trace
	// PageSize is the image's (and the guest's) page size: 4096 or 2 MiB
	// (any power of two in [4096, 1 GiB]). 0 means the trace's, or 4096
	// without a trace. A trace of smaller pages is coarsened: a page is
	// touched when any of its sub-pages is, first-touch order kept.
	PageSize uint32
	// HotBudget limits the hot segment.
	HotBudget Budget
	// Regions describes the guest memory layout; nil means one region at
	// guest address 0 covering the whole file. Sizes must add up to the
	// memory file size; file offsets are recomputed cumulatively.
	Regions []Region
	// ExtentPages is the maximum number of pages per cold extent (default
	// DefaultExtentPages for 4 KiB pages, as many as fit in 256 KiB for
	// larger ones, at least 1).
	ExtentPages uint32
	// Progress, when set, is called as work advances with the bytes done
	// and the total (classification pass plus stored pages).
	Progress func(done, total int64)
	// TraceName names the working set in messages (its file); default its
	// Source.
	TraceName string
	// AllowForeignWS converts with a working set recorded from another
	// memory than this one (wset.CheckMemory): a warning instead of an
	// error.
	AllowForeignWS bool

	memName string // the memory file, for messages
}

// Stats summarises a conversion.
type Stats struct {
	Pages    uint64 `json:"pages"`
	PageSize uint32 `json:"page_size"`
	// SubPageSize is the segments' storage unit: pages larger than it
	// are stored as their non-zero sub-pages.
	SubPageSize      uint32 `json:"sub_page_size"`
	ZeroPages        uint64 `json:"zero_pages"`
	HotPages         uint64 `json:"hot_pages"`
	ColdPages        uint64 `json:"cold_pages"`
	TouchedZeroPages uint64 `json:"touched_zero_pages"`
	// OverBudgetPages are touched non-zero pages that went to the cold
	// segment because the hot budget was exhausted.
	OverBudgetPages uint64 `json:"over_budget_pages"`
	// ZeroSubPages are the zero sub-pages of stored pages: not stored,
	// rebuilt when the page is installed (0 when pages are 4 KiB).
	ZeroSubPages uint64 `json:"zero_sub_pages"`
	// HotBytes and ColdBytes are the segments' sizes.
	HotBytes      uint64 `json:"hot_bytes"`
	ColdBytes     uint64 `json:"cold_bytes"`
	Runs          uint64 `json:"page_map_runs"`
	Extents       uint64 `json:"cold_extents"`
	MetadataBytes uint64 `json:"metadata_bytes"`
	ImageBytes    uint64 `json:"image_bytes"`
	// MemoryXXH64 is the memory file's fingerprint (wset.Fingerprint,
	// 16 hex digits), computed during the classification pass.
	MemoryXXH64 string `json:"memory_xxh64"`
	// WorkingSet says how the working set relates to the memory: "bound"
	// (recorded from it), "unbound" (it does not say) or "foreign"
	// (recorded from another memory, converted with AllowForeignWS);
	// empty without a working set.
	WorkingSet string `json:"working_set,omitempty"`
	// Warnings are for the user: an unbound or a foreign working set.
	Warnings []string `json:"warnings,omitempty"`
}

// Convert builds the image at out from the memory file at mem. The image
// appears atomically (temporary file, fsync, rename) or not at all.
func Convert(mem, out string, opt ConvertOptions) (*Stats, error) {
	f, err := os.Open(mem)
	if err != nil {
		return nil, fmt.Errorf("opening the memory file: %w", err)
	}
	defer f.Close()
	m, size, err := offheap.OpenFileRO(mem)
	if err != nil {
		return nil, fmt.Errorf("mapping the memory file: %w", err)
	}
	defer m.Unmap()
	opt.memName = mem
	st, err := build(f, m.B[:size], out, opt)
	if err != nil {
		return nil, fmt.Errorf("converting %s: %w", mem, err)
	}
	return st, nil
}

// hashingReaderAt passes reads through and hashes them while they come in
// order from offset 0 (the classification pass reads the file sequentially),
// so the memory's fingerprint costs no extra read.
type hashingReaderAt struct {
	r    io.ReaderAt
	h    *wset.Hasher
	next int64
	lost bool // a read out of order: hash by reading again
}

func (s *hashingReaderAt) ReadAt(b []byte, off int64) (int, error) {
	n, err := s.r.ReadAt(b, off)
	if !s.lost && off == s.next {
		s.h.Write(b[:n])
		s.next += int64(n)
	} else {
		s.lost = true
	}
	return n, err
}

// fingerprint is the fingerprint of the size bytes of the file: the hash
// of the reads when they covered it in order, else a second sequential
// read.
func (s *hashingReaderAt) fingerprint(size uint64) (wset.Fingerprint, error) {
	if !s.lost && uint64(s.next) == size {
		return s.h.Fingerprint(), nil
	}
	h := wset.NewHasher()
	if _, err := io.Copy(h, io.NewSectionReader(s.r, 0, int64(size))); err != nil {
		return wset.Fingerprint{}, fmt.Errorf("fingerprint of the memory: %w", err)
	}
	return h.Fingerprint(), nil
}

// plan is the layout decided before any byte is written.
type plan struct {
	ps          uint64
	sub         uint64 // storage unit: SubPageSize, or ps when smaller
	memSize     uint64
	pages       uint64
	zero        pagestat.Bitmap // zero pages
	subZero     pagestat.Bitmap // zero sub-pages (nil when sub == ps)
	hot         []uint64        // pages in hot order
	cold        []uint64        // pages in cold order
	coldTouched uint64          // leading cold pages that were touched
	runs        []Run
	extents     []Extent
	regions     []Region
	hdr         header
}

// makePlan decides the image's layout: page size, regions, which pages are
// zero (a streamed classification pass over f), the hot and cold order, the
// page map, the cold extents and the section offsets.
func makePlan(f io.ReaderAt, mem []byte, opt ConvertOptions, progress func(int64)) (*plan, *Stats, error) {
	ps, trace, err := planPageSize(opt, uint64(len(mem)))
	if err != nil {
		return nil, nil, err
	}
	ep := opt.ExtentPages
	if ep == 0 {
		ep = max(1, uint32(DefaultExtentPages*4096/uint64(ps)))
	}
	p := &plan{ps: uint64(ps), sub: min(uint64(ps), SubPageSize), memSize: uint64(len(mem))}
	p.pages = (p.memSize + p.ps - 1) / p.ps
	st := &Stats{Pages: p.pages, PageSize: ps, SubPageSize: uint32(p.sub)}
	if p.regions, err = planRegions(opt.Regions, p.memSize, p.ps); err != nil {
		return nil, nil, err
	}
	// Classification pass: streamed reads, not the mapping, so zero pages
	// are never faulted in. Pages larger than the storage unit are
	// classified by sub-page: a page is zero when all its sub-pages are.
	// The same reads give the memory's fingerprint.
	hr := &hashingReaderAt{r: f, h: wset.NewHasher()}
	if p.sub == p.ps {
		p.zero, st.ZeroPages, err = pagestat.ZeroPages(hr, int64(p.memSize), int(ps), progress)
	} else {
		p.subZero, _, err = pagestat.ZeroPages(hr, int64(p.memSize), int(p.sub), progress)
		p.zero, st.ZeroPages = p.zeroPages()
	}
	if err != nil {
		return nil, nil, err
	}
	fp, err := hr.fingerprint(p.memSize)
	if err != nil {
		return nil, nil, err
	}
	st.MemoryXXH64 = fmt.Sprintf("%016x", fp.XXH64)
	if opt.Trace != nil {
		name := opt.TraceName
		if name == "" {
			name = fmt.Sprintf("%q", opt.Trace.Source)
		}
		mem := opt.memName
		if mem == "" {
			mem = "the memory file"
		}
		warn, err := wset.CheckMemory(opt.Trace, name, mem, fp, opt.AllowForeignWS)
		if err != nil {
			return nil, nil, err
		}
		st.WorkingSet = opt.Trace.BindingTo(fp).String()
		if warn != "" {
			st.Warnings = append(st.Warnings, warn)
		}
	}
	slot, err := p.order(trace, opt.HotBudget, st)
	if err != nil {
		return nil, nil, err
	}
	p.pageMap(slot)
	p.coldExtents(ep)
	p.layout(ep, st)
	return p, st, nil
}

// planPageSize is the image's page size: opt.PageSize, else the working
// set's, else 4096; a power of two in [4096, 1 GiB]. A working set must be
// valid and, if it names one, for a memory of memSize bytes; one recorded
// in smaller pages is coarsened to the image's (returned as trace).
func planPageSize(opt ConvertOptions, memSize uint64) (ps uint32, trace *wset.Trace, err error) {
	ps, trace = opt.PageSize, opt.Trace
	if ps != 0 && (ps < 4096 || ps&(ps-1) != 0 || ps > 1<<30) {
		return 0, nil, fmt.Errorf("page size %d is not a power of two in [4096, 1 GiB]", ps)
	}
	if trace != nil {
		if err := trace.Validate(); err != nil {
			return 0, nil, fmt.Errorf("working set: %w", err)
		}
		if trace.MemSize != 0 && trace.MemSize != memSize {
			return 0, nil, fmt.Errorf("working set %q is for a memory of %d bytes, memory file has %d", trace.Source, trace.MemSize, memSize)
		}
		switch {
		case ps == 0:
			ps = trace.PageSize
		case ps < trace.PageSize:
			return 0, nil, fmt.Errorf("page size %d is smaller than the working set's %d: an image of %d-byte pages needs a recording of pages that small", ps, trace.PageSize, ps)
		case ps > trace.PageSize:
			if trace, err = trace.Coarsen(ps); err != nil {
				return 0, nil, fmt.Errorf("working set: %w", err)
			}
		}
	}
	if ps == 0 {
		ps = 4096
	}
	if ps < 4096 || ps&(ps-1) != 0 || ps > 1<<30 {
		return 0, nil, fmt.Errorf("page size %d is not a power of two in [4096, 1 GiB]", ps)
	}
	return ps, trace, nil
}

// zeroPages derives the zero pages from the zero sub-pages: a page is zero
// when every one of its sub-pages (inside the memory) is.
func (p *plan) zeroPages() (pagestat.Bitmap, uint64) {
	z := pagestat.NewBitmap(p.pages)
	var n uint64
	per := p.ps / p.sub
	subs := (p.memSize + p.sub - 1) / p.sub
	for pg := uint64(0); pg < p.pages; pg++ {
		zero := true
		for s := pg * per; s < min((pg+1)*per, subs); s++ {
			if !p.subZero.Get(s) {
				zero = false
				break
			}
		}
		if zero {
			z.Set(pg)
			n++
		}
	}
	return z, n
}

// planRegions checks the guest regions (non-empty, in increasing guest
// address order, adding up to memSize, each region's guest address and
// size a multiple of the page size ps when there are several) and gives
// them cumulative file offsets; nil means one region at guest address 0
// covering the file.
func planRegions(in []Region, memSize, ps uint64) ([]Region, error) {
	if in == nil {
		if memSize > 0 {
			return []Region{{GuestAddr: 0, Size: memSize}}, nil
		}
		return nil, nil
	}
	var out []Region
	var off uint64
	for i, r := range in {
		if r.Size == 0 {
			return nil, fmt.Errorf("region %d is empty", i)
		}
		if len(in) > 1 && (r.GuestAddr%ps != 0 || r.Size%ps != 0) {
			return nil, fmt.Errorf("region %d at guest address %#x of %d bytes is not aligned to the %d-byte page size", i, r.GuestAddr, r.Size, ps)
		}
		if i > 0 {
			prev := out[i-1]
			if r.GuestAddr < prev.GuestAddr+prev.Size {
				return nil, fmt.Errorf("region %d at guest address %#x overlaps or precedes region %d [%#x, %#x)", i, r.GuestAddr, i-1, prev.GuestAddr, prev.GuestAddr+prev.Size)
			}
		}
		out = append(out, Region{GuestAddr: r.GuestAddr, Size: r.Size, FileOffset: off})
		off += r.Size
	}
	if off != memSize {
		return nil, fmt.Errorf("regions add up to %d bytes, memory file has %d", off, memSize)
	}
	return out, nil
}

// order puts the non-zero pages in hot and cold order: the working set's
// first touches go hot up to the budget, the touched pages over it lead
// the cold segment in touch order, the untouched pages follow in offset
// order. It returns every page's slot (class<<62 | index in its segment;
// zero pages keep unassigned).
func (p *plan) order(trace *wset.Trace, budget Budget, st *Stats) ([]uint64, error) {
	const unassigned = ^uint64(0)
	slot := make([]uint64, p.pages)
	for i := range slot {
		slot[i] = unassigned
	}
	limit := budget.Limit(p.pages)
	var over []uint64
	if trace != nil {
		for i, a := range trace.FirstTouches() {
			if a.Page >= p.pages {
				return nil, fmt.Errorf("working set first touch %d: page %d beyond the memory file's %d pages", i, a.Page, p.pages)
			}
			switch {
			case p.zero.Get(a.Page):
				st.TouchedZeroPages++
			case uint64(len(p.hot)) < limit:
				slot[a.Page] = uint64(Hot)<<62 | uint64(len(p.hot))
				p.hot = append(p.hot, a.Page)
			default:
				slot[a.Page] = 0 // touched, placed below
				over = append(over, a.Page)
			}
		}
	}
	st.OverBudgetPages = uint64(len(over))
	p.cold = make([]uint64, 0, p.pages-st.ZeroPages-uint64(len(p.hot)))
	for _, pg := range over {
		slot[pg] = uint64(Cold)<<62 | uint64(len(p.cold))
		p.cold = append(p.cold, pg)
	}
	p.coldTouched = uint64(len(p.cold))
	for pg := uint64(0); pg < p.pages; pg++ {
		if slot[pg] == unassigned && !p.zero.Get(pg) {
			slot[pg] = uint64(Cold)<<62 | uint64(len(p.cold))
			p.cold = append(p.cold, pg)
		}
	}
	st.HotPages, st.ColdPages = uint64(len(p.hot)), uint64(len(p.cold))
	return slot, nil
}

// storedSubs returns how many sub-pages page pg stores (every non-zero
// one; 1 when pages are stored whole).
func (p *plan) storedSubs(pg uint64) uint64 {
	if p.subZero == nil {
		return 1
	}
	per := p.ps / p.sub
	subs := (p.memSize + p.sub - 1) / p.sub
	var n uint64
	for s := pg * per; s < min((pg+1)*per, subs); s++ {
		if !p.subZero.Get(s) {
			n++
		}
	}
	return n
}

// subMap returns the sub-page bitmap of page pg (words of 64 bits).
func (p *plan) subMap(pg uint64) []uint64 {
	per := p.ps / p.sub
	subs := (p.memSize + p.sub - 1) / p.sub
	m := make([]uint64, (per+63)/64)
	for k := uint64(0); k < per && pg*per+k < subs; k++ {
		if !p.subZero.Get(pg*per + k) {
			m[k/64] |= 1 << (k % 64)
		}
	}
	return m
}

// pageMap run-length encodes the page classes and segment indexes.
func (p *plan) pageMap(slot []uint64) {
	for pg := uint64(0); pg < p.pages; pg++ {
		c, idx := Zero, uint64(0)
		if !p.zero.Get(pg) {
			c, idx = Class(slot[pg]>>62), slot[pg]&(1<<62-1)
		}
		if n := len(p.runs); n > 0 {
			r := &p.runs[n-1]
			if r.Class == c && r.Count < 1<<31 && (c == Zero || r.Index+uint64(r.Count) == idx) {
				r.Count++
				continue
			}
		}
		p.runs = append(p.runs, Run{Page: pg, Index: idx, Count: 1, Class: c})
	}
}

// coldExtents cuts the cold segment into extents of at most ep pages:
// touched pages first, then untouched, never mixed.
func (p *plan) coldExtents(ep uint32) {
	for first := uint64(0); first < uint64(len(p.cold)); {
		end := min(first+uint64(ep), uint64(len(p.cold)))
		touched := first < p.coldTouched
		if touched {
			end = min(end, p.coldTouched)
		}
		p.extents = append(p.extents, Extent{First: first, Pages: uint32(end - first), Touched: touched})
		first = end
	}
}

// layout fills the header's counts and places the sections one after the
// other, the segments aligned to SegmentAlign.
func (p *plan) layout(ep uint32, st *Stats) {
	h := &p.hdr
	h.version = Version
	h.pageSize, h.memSize, h.pages = uint32(p.ps), p.memSize, p.pages
	h.subPageSize = uint32(p.sub)
	for _, pg := range p.hot {
		h.hotSub += p.storedSubs(pg)
	}
	for _, pg := range p.cold {
		h.coldSub += p.storedSubs(pg)
	}
	if p.subZero != nil {
		// Sub-pages of stored pages that lie in memory, minus those stored.
		per := p.ps / p.sub
		subs := (p.memSize + p.sub - 1) / p.sub
		for _, pages := range [][]uint64{p.hot, p.cold} {
			for _, pg := range pages {
				st.ZeroSubPages += min((pg+1)*per, subs) - pg*per
			}
		}
		st.ZeroSubPages -= h.hotSub + h.coldSub
	}
	h.zeroPages, h.hotPages, h.coldPages = st.ZeroPages, st.HotPages, st.ColdPages
	h.regions, h.extentPages = uint32(len(p.regions)), ep
	h.runs, h.extents = uint64(len(p.runs)), uint64(len(p.extents))
	h.coldTouched = p.coldTouched
	off := uint64(HeaderSize)
	mb := uint64(h.subWords() * 8)
	lens := [numSections]uint64{
		uint64(len(p.regions)) * regionSize, uint64(len(p.runs)) * runSize,
		h.hotPages * digestSize, h.coldPages * digestSize, uint64(len(p.extents)) * extentSize,
		h.hotPages * mb, h.coldPages * mb,
		h.hotSub * p.sub, h.coldSub * p.sub,
	}
	for i := range h.sections {
		if SectionID(i) >= SecHotSegment {
			off = alignUp(off, SegmentAlign)
		}
		h.sections[i] = Section{Offset: off, Length: lens[i]}
		off += lens[i]
	}
	st.Runs, st.Extents = h.runs, h.extents
	st.MetadataBytes = h.metaEnd()
	st.HotBytes, st.ColdBytes = lens[SecHotSegment], lens[SecColdSegment]
	st.ImageBytes = off
}

func alignUp(x, a uint64) uint64 { return (x + a - 1) / a * a }

// page returns the stored bytes of page i of mem: the page itself when
// pages are stored whole (a partial last page zero-padded in a fresh
// buffer), else its non-zero sub-pages concatenated (a partial last
// sub-page zero-padded), in buf when it is large enough.
func (p *plan) page(mem []byte, i uint64, buf []byte) []byte {
	lo := i * p.ps
	if p.subZero == nil {
		hi := lo + p.ps
		if hi <= uint64(len(mem)) {
			return mem[lo:hi]
		}
		b := make([]byte, p.ps)
		copy(b, mem[lo:])
		return b
	}
	per := p.ps / p.sub
	first := i * per
	subs := (p.memSize + p.sub - 1) / p.sub
	// A page whose sub-pages are all stored is the page itself.
	if lo+p.ps <= uint64(len(mem)) && p.storedSubs(i) == per {
		return mem[lo : lo+p.ps]
	}
	if uint64(cap(buf)) < p.ps {
		buf = make([]byte, p.ps)
	}
	b := buf[:0]
	for s := first; s < min(first+per, subs); s++ {
		if p.subZero.Get(s) {
			continue
		}
		n := len(b)
		b = b[:n+int(p.sub)]
		c := copy(b[n:], mem[s*p.sub:min((s+1)*p.sub, uint64(len(mem)))])
		clear(b[n+c:])
	}
	return b
}

// build plans the image of mem (read through src for the classification
// pass) and writes it atomically to out: the segments streamed first, then
// the metadata sections, the header last.
func build(src io.ReaderAt, mem []byte, out string, opt ConvertOptions) (*Stats, error) {
	var total int64
	progress := func(done int64) {
		if opt.Progress != nil {
			opt.Progress(done, total)
		}
	}
	total = int64(len(mem))
	p, st, err := makePlan(src, mem, opt, progress)
	if err != nil {
		return nil, err
	}
	total = int64(len(mem)) + int64((st.HotPages+st.ColdPages)*p.ps)

	f, err := atomicfile.Create(out, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // discards the file unless committed
	hotDigs, coldDigs, err := p.writeSegments(f, mem, int64(len(mem)), progress)
	if err != nil {
		return nil, err
	}
	p.extentDigests(mem)
	if _, err = f.WriteAt(p.metadata(hotDigs, coldDigs), HeaderSize); err != nil {
		return nil, err
	}
	if _, err = f.WriteAt(p.hdr.encode(), 0); err != nil {
		return nil, err
	}
	// The file must end exactly at the end of the cold segment, even when
	// the trailing sections are empty.
	if err = f.Truncate(int64(st.ImageBytes)); err != nil {
		return nil, err
	}
	if err = f.Commit(); err != nil {
		return nil, err
	}
	return st, nil
}

// writeSegments streams the hot and then the cold pages into f from the hot
// segment's offset on (zeros fill the alignment gap between them), sets each
// segment section's digest and returns every stored page's digest. done is
// the progress already made.
func (p *plan) writeSegments(f io.WriteSeeker, mem []byte, done int64, progress func(int64)) (hot, cold []uint64, err error) {
	h := &p.hdr
	hotSec, coldSec := &h.sections[SecHotSegment], &h.sections[SecColdSegment]
	if _, err = f.Seek(int64(hotSec.Offset), io.SeekStart); err != nil {
		return nil, nil, err
	}
	bw := bufio.NewWriterSize(f, 4<<20)
	writeSeg := func(pages []uint64, sec *Section, gap uint64) ([]uint64, error) {
		digs := make([]uint64, len(pages))
		sd := xxhash.New()
		var buf []byte
		if p.subZero != nil {
			buf = make([]byte, 0, p.ps)
		}
		for i, pg := range pages {
			b := p.page(mem, pg, buf)
			digs[i] = digest(b)
			sd.Write(b)
			if _, err := bw.Write(b); err != nil {
				return nil, err
			}
			done += int64(p.ps)
			if i%1024 == 1023 {
				progress(done)
			}
		}
		sec.Digest = sd.Sum64()
		if gap > 0 {
			if _, err := bw.Write(make([]byte, gap)); err != nil {
				return nil, err
			}
		}
		return digs, nil
	}
	if hot, err = writeSeg(p.hot, hotSec, coldSec.Offset-(hotSec.Offset+hotSec.Length)); err != nil {
		return nil, nil, err
	}
	if cold, err = writeSeg(p.cold, coldSec, 0); err != nil {
		return nil, nil, err
	}
	if err = bw.Flush(); err != nil {
		return nil, nil, err
	}
	progress(done)
	return hot, cold, nil
}

// extentDigests sets every cold extent's digest from its pages.
func (p *plan) extentDigests(mem []byte) {
	var buf []byte
	if p.subZero != nil {
		buf = make([]byte, 0, p.ps)
	}
	for i := range p.extents {
		e := &p.extents[i]
		d := xxhash.New()
		for _, pg := range p.cold[e.First : e.First+uint64(e.Pages)] {
			d.Write(p.page(mem, pg, buf))
		}
		e.Digest = d.Sum64()
	}
}

// metadata encodes the metadata sections (regions, page map, hot and cold
// page digests, cold extents, sub-page maps), which lie between the header
// and the hot segment, and sets their digests in the header.
func (p *plan) metadata(hotDigs, coldDigs []uint64) []byte {
	h := &p.hdr
	meta := make([]byte, h.metaEnd()-HeaderSize)
	sec := func(id SectionID) []byte {
		s := h.sections[id]
		return meta[s.Offset-HeaderSize : s.Offset-HeaderSize+s.Length]
	}
	for i, r := range p.regions {
		putRegion(sec(SecRegions)[i*regionSize:], r)
	}
	for i, r := range p.runs {
		putRun(sec(SecPageMap)[i*runSize:], r)
	}
	putDigests(sec(SecHotDigests), hotDigs)
	putDigests(sec(SecColdDigests), coldDigs)
	for i, e := range p.extents {
		putExtent(sec(SecColdExtents)[i*extentSize:], e)
	}
	if p.subZero != nil {
		for _, c := range []struct {
			id    SectionID
			pages []uint64
		}{{SecHotSubMaps, p.hot}, {SecColdSubMaps, p.cold}} {
			b := sec(c.id)
			for i, pg := range c.pages {
				m := p.subMap(pg)
				putDigests(b[i*len(m)*8:], m)
			}
		}
	}
	for id := SecRegions; id <= SecColdSubMaps; id++ {
		h.sections[id].Digest = digest(sec(id))
	}
	return meta
}

func putDigests(b []byte, d []uint64) {
	for i, v := range d {
		b[i*8], b[i*8+1], b[i*8+2], b[i*8+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		b[i*8+4], b[i*8+5], b[i*8+6], b[i*8+7] = byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
	}
}
