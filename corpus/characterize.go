package corpus

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// Stats characterises one workload against its memory image, in percent of
// the image's pages (docs/corpus.md, "Characterization"):
//
//	Zero        pages that are all zero in the snapshot (never stored);
//	Hot         non-zero pages the recording touches (the hot set);
//	TouchedCold non-zero pages the first evaluation trace touches outside
//	            the hot set (served on demand from the cold tier);
//	TouchedZero pages the first evaluation trace touches that are zero;
//	Written     pages the first evaluation trace writes.
type Stats struct {
	Name, Kind                          string
	Pages                               int
	Zero, Hot, TouchedCold, TouchedZero float64
	Written                             float64
	// EvalCoverage is the share of the evaluation's non-zero pages that
	// the hot set covers.
	EvalCoverage float64
}

// Characterize computes Stats for a workload.
func Characterize(w *Workload) (Stats, error) {
	zero, nzero, err := ZeroPages(w.Mem)
	if err != nil {
		return Stats{}, err
	}
	rec, err := w.LoadRecord()
	if err != nil {
		return Stats{}, err
	}
	ev, err := w.LoadEval(0)
	if err != nil {
		return Stats{}, err
	}
	s := Stats{Name: w.Name, Kind: w.Kind, Pages: len(zero)}
	if s.Pages == 0 {
		return s, fmt.Errorf("%s: empty memory image", w.Name)
	}
	isZero := func(p uint64) bool { return p < uint64(len(zero)) && zero[p] }
	hot := map[uint64]bool{}
	for p := range pageSet(rec, 0) {
		if !isZero(p) {
			hot[p] = true
		}
	}
	var cold, tz, evNonZero, covered int
	for p := range pageSet(ev, 0) {
		switch {
		case isZero(p):
			tz++
		case hot[p]:
			covered++
			evNonZero++
		default:
			cold++
			evNonZero++
		}
	}
	pct := func(n int) float64 { return 100 * float64(n) / float64(s.Pages) }
	s.Zero = pct(nzero)
	s.Hot = pct(len(hot))
	s.TouchedCold = pct(cold)
	s.TouchedZero = pct(tz)
	s.Written = pct(len(pageSet(ev, 0x2)))
	if evNonZero > 0 {
		s.EvalCoverage = 100 * float64(covered) / float64(evNonZero)
	}
	return s, nil
}

// WriteTable prints Stats as an aligned table (also used for docs).
func WriteTable(w io.Writer, stats []Stats) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "function\tkind\tMiB\tzero %\thot %\ttouched-cold %\ttouched-zero %\twritten %\thot covers eval %\t")
	for _, s := range stats {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t%.1f\t\n", s.Name, s.Kind, s.Pages*pageSize>>20,
			s.Zero, s.Hot, s.TouchedCold, s.TouchedZero, s.Written, s.EvalCoverage)
	}
	return tw.Flush()
}
