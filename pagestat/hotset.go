package pagestat

import (
	"fmt"
	"io"

	"github.com/aquifer-pool/aquifer/wset"
)

// HotSetPoint is one way of choosing a snapshot's hot set from a recording,
// measured against other invocations (evaluation traces): what the
// pre-install costs against the faults the guest still takes.
type HotSetPoint struct {
	// PageSize is the image's page size (4096, or 2 MiB).
	PageSize int `json:"page_size"`
	// MinTouched (pages larger than 4 KiB): a page is hot when the
	// recording touched at least this many of its 4 KiB pages.
	MinTouched int `json:"min_touched"`
	// HotPages are the non-zero pages chosen hot.
	HotPages uint64 `json:"hot_pages"`
	// InstalledBytes is what the pre-install copies into the guest (hot
	// pages × page size: a 2 MiB page is installed whole).
	InstalledBytes uint64 `json:"installed_bytes"`
	// StoredBytes is what it reads from the hot tier: the hot pages'
	// non-zero 4 KiB sub-pages.
	StoredBytes uint64 `json:"stored_bytes"`
	// EvalFaults is the mean, over the evaluation traces, of the non-zero
	// pages they touch that are not hot: the faults served from the cold
	// tier (zero pages are left to the kernel and cost no handler fault).
	EvalFaults float64 `json:"eval_faults"`
	// EvalWasted is the mean number of hot pages an evaluation trace does
	// not touch: pre-installed for nothing.
	EvalWasted float64 `json:"eval_wasted_pages"`
}

// HotSetTradeoff measures hot-set choices for a memory of size bytes read
// through r, a 4 KiB recording rec and evaluation traces evals (4 KiB):
// the 4 KiB image (every touched non-zero page hot), then for each page
// size in huge (2 MiB in practice) one point per threshold in minTouched.
func HotSetTradeoff(r io.ReaderAt, size int64, rec *wset.Trace, evals []*wset.Trace, huge []int, minTouched []int) ([]HotSetPoint, error) {
	for _, t := range append([]*wset.Trace{rec}, evals...) {
		if t.PageSize != DefaultPageSize {
			return nil, fmt.Errorf("hot-set trade-off needs 4 KiB traces, %q has %d-byte pages", t.Source, t.PageSize)
		}
	}
	zero, _, err := ZeroPages(r, size, DefaultPageSize, nil)
	if err != nil {
		return nil, err
	}
	pages := uint64((size + DefaultPageSize - 1) / DefaultPageSize)
	touched := func(t *wset.Trace) map[uint64]int {
		m := map[uint64]int{}
		for _, a := range t.Accesses {
			if a.Page < pages {
				m[a.Page] = 1
			}
		}
		return m
	}
	recT := touched(rec)
	evalT := make([]map[uint64]int, len(evals))
	for i, e := range evals {
		evalT[i] = touched(e)
	}
	var out []HotSetPoint
	// point measures the hot set of pages of ps bytes whose recording
	// touched at least k of their 4 KiB pages.
	point := func(ps, k int) HotSetPoint {
		per := uint64(ps / DefaultPageSize)
		nonzero := func(p uint64) (subs uint64) {
			for s := p * per; s < min((p+1)*per, pages); s++ {
				if !zero.Get(s) {
					subs++
				}
			}
			return subs
		}
		count := map[uint64]int{}
		for pg := range recT {
			count[pg/per]++
		}
		pt := HotSetPoint{PageSize: ps, MinTouched: k}
		hot := map[uint64]bool{}
		for p, c := range count {
			if nz := nonzero(p); nz > 0 && c >= k {
				hot[p] = true
				pt.HotPages++
				pt.StoredBytes += nz * DefaultPageSize
			}
		}
		pt.InstalledBytes = pt.HotPages * uint64(ps)
		for _, et := range evalT {
			seen := map[uint64]bool{}
			for pg := range et {
				p := pg / per
				if seen[p] {
					continue
				}
				seen[p] = true
				if !hot[p] && nonzero(p) > 0 {
					pt.EvalFaults++
				}
			}
			for p := range hot {
				if !seen[p] {
					pt.EvalWasted++
				}
			}
		}
		if n := float64(len(evalT)); n > 0 {
			pt.EvalFaults /= n
			pt.EvalWasted /= n
		}
		return pt
	}
	out = append(out, point(DefaultPageSize, 1))
	for _, ps := range huge {
		if ps <= DefaultPageSize || ps%DefaultPageSize != 0 {
			return nil, fmt.Errorf("page size %d is not a multiple of 4 KiB above it", ps)
		}
		for _, k := range minTouched {
			out = append(out, point(ps, k))
		}
	}
	return out, nil
}
