package pagestat

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"

	"github.com/aquifer-pool/aquifer/wset"
	"github.com/cespare/xxhash/v2"
)

// pageHash buckets pages for distinct counting; tests replace it with a
// colliding function to exercise the byte-by-byte confirmation.
var pageHash = xxhash.Sum64

// DefaultPageSize is the guest page size of a Firecracker memory file
// without hugepages.
const DefaultPageSize = 4096

// chunkSize is how much of the file one read brings in.
const chunkSize = 8 << 20

// Stats are the page statistics of one memory file. The JSON field names are
// the `inspect --json` schema (docs/format.md).
type Stats struct {
	// Path is the file scanned, when known.
	Path string `json:"path,omitempty"`
	// SizeBytes is the file size. When it is not a multiple of PageSize the
	// last page is partial; its missing tail counts as zero.
	SizeBytes int64 `json:"size_bytes"`
	// PageSize is the page size used for the statistics.
	PageSize int `json:"page_size"`
	// Pages is the number of pages, ceil(SizeBytes / PageSize).
	Pages uint64 `json:"pages"`
	// ZeroPages is the number of pages whose bytes are all zero.
	ZeroPages uint64 `json:"zero_pages"`
	// NonzeroPages = Pages - ZeroPages.
	NonzeroPages uint64 `json:"nonzero_pages"`
	// DistinctNonzeroPages is the number of different contents among the
	// non-zero pages (exact: digests are confirmed byte by byte).
	DistinctNonzeroPages uint64 `json:"distinct_nonzero_pages"`
	// DuplicatePages = NonzeroPages - DistinctNonzeroPages: pages a
	// content-addressed store would not need to keep twice.
	DuplicatePages uint64 `json:"duplicate_pages"`
	// ZeroFraction = ZeroPages / Pages (0 for an empty file).
	ZeroFraction float64 `json:"zero_fraction"`
	// ZeroRuns describes the maximal runs of consecutive zero pages.
	ZeroRuns RunStats `json:"zero_runs"`
	// Trace holds the working-set overlay; nil (and absent from JSON) when
	// no trace was given. Its fields are inlined in the JSON object.
	*TraceStats
}

// RunStats is the length distribution of maximal runs of zero pages.
type RunStats struct {
	// Count is the number of runs.
	Count uint64 `json:"count"`
	// Longest is the longest run in pages.
	Longest uint64 `json:"longest"`
	// Histogram has one bucket per power of two: bucket i holds runs of
	// length in [2^i, 2^(i+1)-1]. Empty buckets above the longest run are
	// omitted; empty buckets below it are present with zero counts.
	Histogram []RunBucket `json:"histogram"`
}

// RunBucket is one bucket of RunStats.Histogram.
type RunBucket struct {
	// MinPages and MaxPages bound the run lengths in the bucket (inclusive).
	MinPages uint64 `json:"min_pages"`
	MaxPages uint64 `json:"max_pages"`
	// Runs is the number of runs in the bucket, Pages their total length.
	Runs  uint64 `json:"runs"`
	Pages uint64 `json:"pages"`
}

// TraceStats overlays a working-set trace on the page statistics.
type TraceStats struct {
	// TraceSource is the trace's Source string.
	TraceSource string `json:"trace_source"`
	// TraceAccesses is the number of access records in the trace.
	TraceAccesses uint64 `json:"trace_accesses"`
	// TouchedPages is the number of distinct pages the trace touches.
	TouchedPages uint64 `json:"touched_pages"`
	// HotPages is the number of touched pages that are non-zero: the pages
	// an image's hot segment stores (before any hot budget).
	HotPages uint64 `json:"hot_pages"`
	// TouchedZeroPages is the number of touched pages that are zero in the
	// file: served as zero, never stored.
	TouchedZeroPages uint64 `json:"touched_zero_pages"`
	// WrittenPages is the number of touched pages with a write access.
	WrittenPages uint64 `json:"written_pages"`
	// ExecPages is the number of touched pages with an execute access.
	ExecPages uint64 `json:"exec_pages"`
	// ColdPages = NonzeroPages - HotPages.
	ColdPages uint64 `json:"cold_pages"`
	// HotFraction = HotPages / Pages.
	HotFraction float64 `json:"hot_fraction"`
}

// Options control a scan.
type Options struct {
	// PageSize defaults to DefaultPageSize. It must be a power of two.
	PageSize int
	// Trace, when set, is overlaid on the statistics. Its page size must
	// equal PageSize and its memory size (when non-zero) the file size.
	Trace *wset.Trace
	// Progress, when set, is called after every chunk with the bytes done.
	Progress func(done int64)
}

// ScanFile scans the memory file at path.
func ScanFile(path string, opt Options) (*Stats, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	s, err := Scan(f, st.Size(), opt)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s.Path = path
	return s, nil
}

// Scan computes the statistics of size bytes read from r. Reading overlaps
// with scanning: one goroutine reads the next chunk while the caller's
// goroutine scans the current one.
func Scan(r io.ReaderAt, size int64, opt Options) (*Stats, error) {
	ps := opt.PageSize
	if ps == 0 {
		ps = DefaultPageSize
	}
	if ps < 512 || ps&(ps-1) != 0 || ps > chunkSize {
		return nil, fmt.Errorf("page size %d is not a power of two in [512, %d]", ps, chunkSize)
	}
	if size < 0 {
		return nil, fmt.Errorf("negative size %d", size)
	}
	if t := opt.Trace; t != nil {
		if int(t.PageSize) != ps {
			return nil, fmt.Errorf("trace page size %d differs from scan page size %d", t.PageSize, ps)
		}
		if t.MemSize != 0 && int64(t.MemSize) != size {
			return nil, fmt.Errorf("trace is for a memory of %d bytes, file has %d", t.MemSize, size)
		}
	}
	pages := uint64((size + int64(ps) - 1) / int64(ps))
	s := &Stats{SizeBytes: size, PageSize: ps, Pages: pages}
	sc := newScanner(r, size, ps, pages)

	if err := forChunks(r, size, func(b []byte, off int64) {
		sc.add(b)
		if opt.Progress != nil {
			opt.Progress(off + int64(len(b)))
		}
	}); err != nil {
		return nil, err
	}
	if sc.err != nil {
		return nil, sc.err
	}
	sc.finish(s)
	if opt.Trace != nil {
		ts, err := overlay(opt.Trace, sc.zero, s)
		if err != nil {
			return nil, err
		}
		s.TraceStats = ts
	}
	return s, nil
}

// Bitmap is a dense bit set over page indices.
type Bitmap []uint64

// NewBitmap returns a bitmap of n bits, all clear.
func NewBitmap(n uint64) Bitmap { return make(Bitmap, (n+63)/64) }

// Set sets bit i.
func (b Bitmap) Set(i uint64) { b[i/64] |= 1 << (i % 64) }

// Get reports bit i.
func (b Bitmap) Get(i uint64) bool { return b[i/64]&(1<<(i%64)) != 0 }

type scanner struct {
	ps      int
	page    uint64 // next page index
	zero    Bitmap
	zeros   uint64
	run     uint64   // current zero run length
	hist    []uint64 // runs per power-of-two bucket
	histPg  []uint64
	runs    uint64
	longest uint64
	// Exact distinct counting: digest -> file offset of the first page
	// with that digest, with overflow lists for true collisions.
	seen      map[uint64]int64
	overflow  map[uint64][]int64
	distinctN uint64
	r         io.ReaderAt
	size      int64
	cmp       []byte
	err       error
}

func newScanner(r io.ReaderAt, size int64, ps int, pages uint64) *scanner {
	return &scanner{ps: ps, zero: NewBitmap(pages), seen: make(map[uint64]int64), r: r, size: size}
}

func (s *scanner) add(b []byte) {
	for len(b) > 0 {
		p := b[:min(len(b), s.ps)]
		b = b[len(p):]
		if IsZero(p) {
			s.zero.Set(s.page)
			s.zeros++
			s.run++
		} else {
			s.endRun()
			if err := s.distinct(p); err != nil && s.err == nil {
				s.err = err
			}
		}
		s.page++
	}
}

func (s *scanner) endRun() {
	if s.run == 0 {
		return
	}
	i := bits.Len64(s.run) - 1
	for len(s.hist) <= i {
		s.hist = append(s.hist, 0)
		s.histPg = append(s.histPg, 0)
	}
	s.hist[i]++
	s.histPg[i] += s.run
	s.runs++
	s.longest = max(s.longest, s.run)
	s.run = 0
}

// distinct records a non-zero page's content. Pages are bucketed by
// xxhash64; a page whose digest was seen before is compared byte by byte
// with the first page of that digest, re-read from the file (duplicates are
// a minority, so this costs far less than keeping copies of every distinct
// page). A partial last page is padded with zeros first, so it equals a
// full page with the same prefix and a zero tail, as in the image format.
func (s *scanner) distinct(p []byte) error {
	if len(p) < s.ps {
		full := make([]byte, s.ps)
		copy(full, p)
		p = full
	}
	off := int64(s.page) * int64(s.ps)
	h := pageHash(p)
	first, ok := s.seen[h]
	if !ok {
		s.seen[h] = off
		s.distinctN++
		return nil
	}
	if eq, err := s.equal(first, p); err != nil || eq {
		return err
	}
	for _, o := range s.overflow[h] {
		if eq, err := s.equal(o, p); err != nil || eq {
			return err
		}
	}
	if s.overflow == nil {
		s.overflow = make(map[uint64][]int64)
	}
	s.overflow[h] = append(s.overflow[h], off)
	s.distinctN++
	return nil
}

// equal compares p with the page at file offset off.
func (s *scanner) equal(off int64, p []byte) (bool, error) {
	if s.cmp == nil {
		s.cmp = make([]byte, s.ps)
	}
	clear(s.cmp)
	n := min(int64(s.ps), s.size-off)
	if m, err := s.r.ReadAt(s.cmp[:n], off); int64(m) != n {
		return false, fmt.Errorf("re-read page at byte %d: %d of %d bytes: %v", off, m, n, err)
	}
	return bytes.Equal(s.cmp, p), nil
}

func (s *scanner) finish(st *Stats) {
	s.endRun()
	st.ZeroPages = s.zeros
	st.NonzeroPages = st.Pages - s.zeros
	st.DistinctNonzeroPages = s.distinctN
	st.DuplicatePages = st.NonzeroPages - st.DistinctNonzeroPages
	if st.Pages > 0 {
		st.ZeroFraction = float64(s.zeros) / float64(st.Pages)
	}
	st.ZeroRuns = RunStats{Count: s.runs, Longest: s.longest, Histogram: []RunBucket{}}
	for i := range s.hist {
		lo := uint64(1) << i
		st.ZeroRuns.Histogram = append(st.ZeroRuns.Histogram, RunBucket{MinPages: lo, MaxPages: 2*lo - 1, Runs: s.hist[i], Pages: s.histPg[i]})
	}
}

func overlay(t *wset.Trace, zero Bitmap, s *Stats) (*TraceStats, error) {
	ts := &TraceStats{TraceSource: t.Source, TraceAccesses: uint64(len(t.Accesses))}
	for i, a := range t.FirstTouches() {
		if a.Page >= s.Pages {
			return nil, fmt.Errorf("trace first touch %d: page %d beyond the file's %d pages", i, a.Page, s.Pages)
		}
		ts.TouchedPages++
		if zero.Get(a.Page) {
			ts.TouchedZeroPages++
		} else {
			ts.HotPages++
		}
		if a.Kind&wset.Write != 0 {
			ts.WrittenPages++
		}
		if a.Kind&wset.Exec != 0 {
			ts.ExecPages++
		}
	}
	ts.ColdPages = s.NonzeroPages - ts.HotPages
	if s.Pages > 0 {
		ts.HotFraction = float64(ts.HotPages) / float64(s.Pages)
	}
	return ts, nil
}

// forChunks reads size bytes of r in chunkSize pieces and calls fn on each
// in order. One goroutine reads the next chunk while fn runs on the
// current one.
func forChunks(r io.ReaderAt, size int64, fn func(b []byte, off int64)) error {
	type chunk struct {
		buf []byte
		off int64
		err error
	}
	bufs := make(chan []byte, 2)
	for range 2 {
		bufs <- make([]byte, min(chunkSize, max(size, 1)))
	}
	full := make(chan chunk, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(full)
		for off := int64(0); off < size; off += chunkSize {
			var b []byte
			select {
			case b = <-bufs:
			case <-stop:
				return
			}
			n := min(int64(chunkSize), size-off)
			b = b[:n]
			m, err := r.ReadAt(b, off)
			if int64(m) == n {
				err = nil
			} else if err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("short read at byte %d: %d of %d bytes (file shrank?)", off, m, n)
			}
			select {
			case full <- chunk{b, off, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range full {
		if c.err != nil {
			return fmt.Errorf("read: %w", c.err)
		}
		fn(c.buf, c.off)
		bufs <- c.buf[:cap(c.buf)]
	}
	return nil
}

// ZeroPages classifies every page of size bytes read from r: bit i of the
// returned bitmap is set when page i is all zero (a partial last page
// counts its missing tail as zero). It is the classification pass of an
// image conversion: no content hashing, just the zero test.
func ZeroPages(r io.ReaderAt, size int64, pageSize int, progress func(done int64)) (Bitmap, uint64, error) {
	if pageSize < 512 || pageSize&(pageSize-1) != 0 || pageSize > chunkSize {
		return nil, 0, fmt.Errorf("page size %d is not a power of two in [512, %d]", pageSize, chunkSize)
	}
	pages := uint64((size + int64(pageSize) - 1) / int64(pageSize))
	bm := NewBitmap(pages)
	var zeros uint64
	err := forChunks(r, size, func(b []byte, off int64) {
		pg := uint64(off) / uint64(pageSize)
		end := off + int64(len(b))
		for len(b) > 0 {
			p := b[:min(len(b), pageSize)]
			b = b[len(p):]
			if IsZero(p) {
				bm.Set(pg)
				zeros++
			}
			pg++
		}
		if progress != nil {
			progress(end)
		}
	})
	if err != nil {
		return nil, 0, err
	}
	return bm, zeros, nil
}
