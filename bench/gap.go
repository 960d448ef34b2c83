package bench

import (
	"fmt"
	"io"
	"strconv"
	"time"
)

// Gap is what separates one strategy from warm on one workload, from the
// p50 breakdowns (ms in the tables): the time before the vCPUs run
// (restore + resume wait) and, on the critical vCPU, the stalls of first
// accesses by page class and the rest (think time, verification, faults the
// kernel serves, CPU the pager's background work takes from the vCPUs).
// Each part is a difference of p50s, so the parts add up to the
// difference of the end-to-end p50s only approximately.
type Gap struct {
	Concurrency int           `json:"concurrency"`
	Workload    string        `json:"workload"`
	Variant     string        `json:"variant"`
	EndToEnd    time.Duration `json:"end_to_end_ns"` // T(variant) - T(warm)
	Ratio       float64       `json:"ratio_to_warm"` // T(variant) / T(warm), p50s
	// RatioCI is T(variant)/T(warm) from the bootstrap: warm's speedup
	// interval inverted.
	RatioCI    CI            `json:"ratio_to_warm_ci95,omitempty"`
	Restore    time.Duration `json:"restore_ns"`
	ResumeWait time.Duration `json:"resume_wait_ns"`
	Hot        time.Duration `json:"hot_stall_ns"`
	Cold       time.Duration `json:"cold_stall_ns"`
	Zero       time.Duration `json:"zero_stall_ns"`
	Rest       time.Duration `json:"rest_ns"`
}

// gaps computes the gap to warm of every aquifer strategy.
func (r *Report) gaps() []Gap {
	type key struct {
		c int
		w string
	}
	warm := map[key]Result{}
	for _, x := range r.Results {
		if x.Strategy == Warm && x.Breakdown != nil {
			warm[key{x.Concurrency, x.Workload}] = x
		}
	}
	rest := func(b *BreakdownP50) time.Duration {
		return b.Critical - b.Stall[ClassHot] - b.Stall[ClassCold] - b.Stall[ClassZero]
	}
	var out []Gap
	for _, x := range r.Results {
		wm, ok := warm[key{x.Concurrency, x.Workload}]
		if !ok || x.Breakdown == nil || !isAquifer(x.Strategy) || wm.P50 <= 0 {
			continue
		}
		a, b := x.Breakdown, wm.Breakdown
		g := Gap{Concurrency: x.Concurrency, Workload: x.Workload, Variant: x.Variant,
			EndToEnd: time.Duration(x.P50 - wm.P50), Ratio: float64(x.P50) / float64(wm.P50),
			Restore: a.Restore - b.Restore, ResumeWait: a.ResumeWait - b.ResumeWait,
			Hot: a.Stall[ClassHot] - b.Stall[ClassHot], Cold: a.Stall[ClassCold] - b.Stall[ClassCold],
			Zero: a.Stall[ClassZero] - b.Stall[ClassZero], Rest: rest(a) - rest(b)}
		if x.Strategy == Aquifer && wm.SpeedupCI[0] > 0 {
			g.RatioCI = CI{1 / wm.SpeedupCI[1], 1 / wm.SpeedupCI[0]}
		}
		out = append(out, g)
	}
	return out
}

func isAquifer(s string) bool {
	switch s {
	case Aquifer, AquiferEarly, AquiferCXLOnly, AquiferRDMAOnly:
		return true
	}
	return false
}

var gapHeader = []string{"conc", "workload", "strategy", "T / T(warm)", "gap", "restore", "resume wait", "hot stall", "cold stall",
	"zero stall", "rest"}

// writeGaps prints the gap to warm of the aquifer strategies that show
// accepts (all with nil) at concurrency c (all levels if c <= 0).
func (r *Report) writeGaps(w io.Writer, c int, show func(string) bool, markdown bool) {
	f := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e6) }
	var rows [][]string
	for _, g := range r.GapToWarm {
		if (c > 0 && g.Concurrency != c) || (show != nil && !show(g.Variant)) {
			continue
		}
		ratio := fmt.Sprintf("%.2fx", g.Ratio)
		if g.RatioCI[0] > 0 {
			ratio += fmt.Sprintf(" [%.2f, %.2f]", g.RatioCI[0], g.RatioCI[1])
		}
		rows = append(rows, []string{strconv.Itoa(g.Concurrency), g.Workload, g.Variant, ratio, f(g.EndToEnd), f(g.Restore),
			f(g.ResumeWait), f(g.Hot), f(g.Cold), f(g.Zero), f(g.Rest)})
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w, "The gap to warm (ms, each part a difference of p50s from the breakdown: they add up to the gap only approximately): "+
		"time before the vCPUs run (restore, resume wait = the pre-install), then on the critical vCPU the first-access stalls per page "+
		"class and the rest (think time, verification, and the CPU the serving side's background work takes from the vCPUs).")
	fmt.Fprintln(w)
	writeGrid(w, gapHeader, rows, markdown)
}
