package handler

import (
	"fmt"
	"time"

	"github.com/aquifer-pool/aquifer/hugetlb"
)

// 2 MiB guests (Firecracker's huge_pages "2M": hugetlbfs-backed memory).
//
// Faults and installs copy whole 2 MiB pages; hugetlb has no
// UFFDIO_ZEROPAGE, so a zero page is a copy from a 2 MiB zero buffer.
//
// REMOVE: the kernel discards hugetlb memory only in whole huge pages.
// madvise(MADV_DONTNEED) on a hugetlb mapping fails with EINVAL when its
// start is not 2 MiB aligned and rounds its end down to a huge page
// boundary, and sends UFFD_EVENT_REMOVE for exactly what it discarded. So
// when Firecracker's balloon reports 4 KiB ranges (its balloon works in
// guest 4 KiB frames and cannot reclaim huge-page backing), nothing reaches
// the handler unless a range covers a whole aligned 2 MiB page. The handler
// marks as removed only the huge pages a REMOVE range covers entirely;
// those get zero pages from then on and never snapshot content again. A
// range covering part of a huge page (which the kernel never sends for
// hugetlb) removes nothing: the page keeps its content, as it does in the
// VM.
//
// An exhausted pool: when UFFDIO_COPY cannot allocate a huge page for the
// destination, the kernel answers EEXIST (not ENOMEM) if a page table for
// the range already exists. The handler records the huge pages it
// installed, so an EEXIST on a page it never installed is reported as the
// pool running dry (a clear error naming vm.nr_hugepages) instead of being
// woken forever. An install of the same page by another thread may still
// be completing (its copy done, its mark not yet set), so the page is
// given a moment to be marked before the pool is blamed.

// exhausted reports whether an EEXIST on page p of a 2 MiB region means an
// exhausted pool: p was never installed by this handler, even after any
// install of it still in flight has had time to finish.
func (r *region) exhausted(p uint64) bool {
	if r.present == nil {
		return false
	}
	for i := 0; i < 50; i++ {
		if r.installed(p) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return !r.installed(p)
}

func (r *region) installed(p uint64) bool {
	return r.present != nil && r.present[p/64].Load()&(1<<(p%64)) != 0
}

// setPresent marks n pages from p as installed (2 MiB regions only).
func (r *region) setPresent(p, n uint64) {
	if r.present == nil {
		return
	}
	for q := p; q < p+n; q++ {
		w := &r.present[q/64]
		for {
			o := w.Load()
			if w.CompareAndSwap(o, o|1<<(q%64)) {
				break
			}
		}
	}
}

func (r *region) clearPresent(p uint64) {
	if r.present == nil {
		return
	}
	w := &r.present[p/64]
	for {
		o := w.Load()
		if w.CompareAndSwap(o, o&^(1<<(p%64))) {
			return
		}
	}
}

// poolExhausted is the error of an install the hugetlb pool could not
// back.
func (h *Handler) poolExhausted(addr uintptr, err error) error {
	pool := "pool state unknown"
	if p, serr := hugetlb.Status(); serr == nil {
		pool = p.String()
	}
	return fmt.Errorf("no free 2 MiB huge page to install guest page at %#x (the kernel answered %v): the hugetlb pool is exhausted (%s); reserve more with `sysctl -w %s=N`", addr, err, pool, hugetlb.Sysctl)
}
