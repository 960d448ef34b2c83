package pager

import (
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/aquifer-pool/aquifer/hugetlb"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
	"golang.org/x/sys/unix"
)

// Pages larger than the image's storage unit (2 MiB guests).
//
// A 2 MiB image stores each hot or cold page as its non-zero 4 KiB
// sub-pages only. A page stored whole (every sub-page non-zero) is installed
// straight from the tier's bytes, and consecutive whole pages of a hot run
// with one UFFDIO_COPY, as 4 KiB pages are. Any other page is rebuilt in a
// staging buffer (stored sub-pages copied to their places, zeros between
// them) and installed from there: hugetlb memory can only be filled in
// whole huge pages, and has no UFFDIO_ZEROPAGE. Zero 2 MiB pages are left
// to the kernel (UFFDIO_UNREGISTER: the kernel fills them with zeroed huge
// pages itself), and one faulted before that is copied from the handler's
// 2 MiB zero buffer.
//
// Staging buffers are off-heap, prefaulted and recycled; each remembers
// which of its sub-pages hold data, so rebuilding a sparse page clears only
// what the previous page left behind instead of 2 MiB.

// stage is a staging buffer of one page.
type stage struct {
	m     *offheap.Mapping
	dirty []uint64 // sub-pages holding non-zero bytes from an earlier page
}

// stagePool recycles staging buffers of one page size.
type stagePool struct {
	mu   sync.Mutex
	ps   int
	free []*stage
}

// maxFreeStages bounds the idle staging buffers kept per page size.
const maxFreeStages = 16

var (
	stagePoolsMu sync.Mutex
	stagePools   = map[int]*stagePool{}
)

func stagesFor(ps int) *stagePool {
	stagePoolsMu.Lock()
	defer stagePoolsMu.Unlock()
	p, ok := stagePools[ps]
	if !ok {
		p = &stagePool{ps: ps}
		stagePools[ps] = p
	}
	return p
}

func (p *stagePool) get() (*stage, error) {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		s := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return s, nil
	}
	p.mu.Unlock()
	m, err := offheap.Anon(p.ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("staging buffer: %w", err)
	}
	return &stage{m: m, dirty: make([]uint64, (p.ps/snapimage.SubPageSize+63)/64)}, nil
}

func (p *stagePool) put(s *stage) {
	p.mu.Lock()
	if len(p.free) < maxFreeStages {
		p.free = append(p.free, s)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	s.m.Unmap()
}

// fill rebuilds stored page i of segment id in the buffer from its stored
// bytes: stored sub-pages copied, sub-pages a previous page left non-zero
// cleared.
func (s *stage) fill(img *snapimage.Image, id snapimage.SectionID, i uint64, stored []byte) {
	m := img.SubPages(id, i)
	sub := uint64(img.SubPageSize())
	b := s.m.B
	k := uint64(0) // index of the next stored sub-page
	for w := range s.dirty {
		have, was := m[w], s.dirty[w]
		for x := have | was; x != 0; x &= x - 1 {
			j := uint64(w*64 + bits.TrailingZeros64(x))
			d := b[j*sub : (j+1)*sub]
			if have&(1<<(j%64)) != 0 {
				copy(d, stored[k*sub:(k+1)*sub])
				k++
			} else {
				clear(d)
			}
		}
		s.dirty[w] = have
	}
}

// pageSource returns the address of page i of segment id, whose stored
// bytes are stored (its Span), ready to be copied into the guest: the
// stored bytes themselves for a page stored whole when they are off-heap
// memory of the tier (direct), else a staging buffer holding the rebuilt
// page. release returns the buffer (nil when none was used).
func (s *Session) pageSource(id snapimage.SectionID, i uint64, stored []byte, direct bool) (addr uintptr, release func(), err error) {
	if direct && s.img.Full(id, i) {
		return offheap.AddrOf(stored), nil, nil
	}
	st, err := s.stages.get()
	if err != nil {
		return 0, nil, err
	}
	st.fill(s.img, id, i, stored)
	return st.m.Addr(), func() { s.stages.put(st) }, nil
}

// hotStored returns hot page i's stored bytes in seg. A hot segment that a
// tier keeps in several pieces (CXL extents of a chunk each) may split a
// page between two of them: its bytes are then copied into one slice on
// the Go heap, and direct is false (they cannot be a UFFDIO_COPY source).
func (s *Session) hotStored(seg restore.Segment, i uint64) (b []byte, direct bool) {
	off, n := s.img.Span(snapimage.SecHotSegment, i)
	for k, p := range seg {
		if off < uint64(len(p)) {
			if off+n <= uint64(len(p)) {
				return p[off : off+n], true
			}
			b = make([]byte, 0, n)
			for _, q := range seg[k:] {
				take := min(n-uint64(len(b)), uint64(len(q))-off)
				b = append(b, q[off:off+take]...)
				off = 0
				if uint64(len(b)) == n {
					break
				}
			}
			return b, false
		}
		off -= uint64(len(p))
	}
	return nil, false
}

// whole reports whether the image stores every page whole (4 KiB images,
// version 1 images): the tiers' bytes are then the pages, in order.
func (s *Session) whole() bool { return s.img.SubPageSize() == s.img.PageSize() }

// spanOf returns stored page i's bytes inside seg, a whole segment (or an
// arena holding it) of segment id.
func (s *Session) spanOf(id snapimage.SectionID, seg []byte, i uint64) []byte {
	off, n := s.img.Span(id, i)
	return seg[off : off+n]
}

// checkHugePool refuses a 2 MiB restore the hugetlb pool cannot back: the
// hot set alone needs that many free huge pages before the VM resumes
// (ErrUnavailable: retry once VMs have exited or the pool has grown).
func checkHugePool(img *snapimage.Image) error {
	if img.PageSize() != hugetlb.PageSize {
		return nil
	}
	_, nhot, _ := img.Counts()
	if err := hugetlb.Check(int(nhot)); err != nil {
		return restore.Mark(restore.ErrUnavailable, fmt.Errorf("a 2 MiB guest whose hot set is %d huge pages: %w", nhot, err))
	}
	return nil
}

// longZeroRun reports whether a zero run is long enough to leave to the
// kernel before resume: 256 KiB or more (64 pages of 4 KiB; every run of
// 2 MiB pages).
func (s *Session) longZeroRun(run snapimage.Run) bool {
	return uint64(run.Count)*s.ps >= 64*4096
}

// installStored installs n stored pages of segment id, indices first
// onward, onto the consecutive guest pages from page on, ahead of faults
// (InstallQuiet). seg holds the segment's bytes at segment offsets, off
// the Go heap (the cold arena). Whole pages stored back to back go in one
// copy; any other page is rebuilt in a staging buffer first.
func (s *Session) installStored(id snapimage.SectionID, seg []byte, first, page, n uint64) (uint64, error) {
	base := offheap.AddrOf(seg)
	if s.whole() {
		off, _ := s.img.Span(id, first)
		return s.h.InstallQuiet(page*s.ps, base+uintptr(off), n)
	}
	var installed uint64
	for k := uint64(0); k < n; {
		i := first + k
		if s.img.Full(id, i) {
			// A stretch of whole pages is contiguous in the segment.
			j := k + 1
			for j < n && s.img.Full(id, first+j) {
				j++
			}
			off, _ := s.img.Span(id, i)
			m, err := s.h.InstallQuiet((page+k)*s.ps, base+uintptr(off), j-k)
			installed += m
			if err != nil {
				return installed, err
			}
			k = j
			continue
		}
		addr, release, err := s.pageSource(id, i, s.spanOf(id, seg, i), true)
		if err != nil {
			return installed, err
		}
		m, err := s.h.InstallQuiet((page+k)*s.ps, addr, 1)
		release()
		installed += m
		if err != nil {
			return installed, err
		}
		k++
	}
	return installed, nil
}

// preinstallWorkers is how many threads pre-install and verify a hot set
// of 2 MiB pages, and verify any large hot set: a 2 MiB hot set is tens of
// MiB (every huge page the recording touched), and the kernel copies each
// huge page in the thread that asks, so the work spreads over cores.
func preinstallWorkers() int { return max(1, min(runtime.GOMAXPROCS(0), 4)) }

// verifyHot checks every hot page's stored bytes in seg against the
// image's digests, in parallel for a large hot set.
func (s *Session) verifyHot(seg restore.Segment, src string) error {
	_, nhot, _ := s.img.Counts()
	check := func(i uint64) error {
		var b []byte
		if s.whole() {
			b = seg.Page(i, s.ps)
		} else {
			b, _ = s.hotStored(seg, i)
		}
		if err := s.img.VerifyHotPage(i, b); err != nil {
			return fmt.Errorf("hot segment from %s: %w", src, err)
		}
		return nil
	}
	const chunk = 256 // pages per task: 1 MiB of 4 KiB pages
	if s.whole() && s.ps*nhot < 4<<20 {
		for i := uint64(0); i < nhot; i++ {
			if err := check(i); err != nil {
				return err
			}
		}
		return nil
	}
	per := uint64(chunk)
	if !s.whole() {
		per = 1
	}
	return parallel((nhot+per-1)/per, func(_ int, t uint64) error {
		for i := t * per; i < min((t+1)*per, nhot); i++ {
			if err := check(i); err != nil {
				return err
			}
		}
		return nil
	})
}

// preinstallHuge installs a hot set of pages stored as sub-pages, in
// first-touch order, on several threads: each rebuilds its page in its own
// staging buffer and copies it in. It returns the pages installed.
func (s *Session) preinstallHuge(seg restore.Segment) (uint64, error) {
	_, nhot, _ := s.img.Counts()
	var installed atomic.Uint64
	stages := make([]*stage, preinstallWorkers())
	defer func() {
		for _, st := range stages {
			if st != nil {
				s.stages.put(st)
			}
		}
	}()
	err := parallel(nhot, func(w int, i uint64) error {
		page := s.img.HotPage(i)
		stored, direct := s.hotStored(seg, i)
		addr := offheap.AddrOf(stored)
		if !direct || !s.img.Full(snapimage.SecHotSegment, i) {
			if stages[w] == nil {
				st, err := s.stages.get()
				if err != nil {
					return err
				}
				stages[w] = st
			}
			stages[w].fill(s.img, snapimage.SecHotSegment, i, stored)
			addr = stages[w].m.Addr()
		}
		n, err := s.h.InstallQuiet(page*s.ps, addr, 1)
		installed.Add(n)
		if err != nil {
			return fmt.Errorf("pre-installing hot page %d: %w", page, err)
		}
		return nil
	})
	return installed.Load(), err
}
