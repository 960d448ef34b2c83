package bench

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// WriteMarkdown prints the report as the tables of docs/evaluation.md.
func (r *Report) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "Command: `%s`  \n", r.Command)
	fmt.Fprintf(w, "Date: %s; machine: %s; corpus: %s; rounds per concurrency level: %s (asked: %s)  \n", r.Date, r.Machine, r.Corpus,
		roundsText(r.RoundsRun), runsText(r.Runs))
	if r.Load != nil {
		fmt.Fprintf(w, "Load average (1, 5, 15 min) before: %s, after: %s; wall time %v  \n", r.Load.Before, r.Load.After, r.Wall.Round(time.Second))
	}
	if n := r.Noise; n != nil {
		fmt.Fprintf(w, "Machine noise (calibration loops, %d runs between batches): CPU loop p50 %v, p5–p95 spread %.0f%%; fresh-page first touch p50 %v, spread %.0f%%  \n",
			n.Runs, n.CPUP50.Round(time.Microsecond), 100*n.CPUSpread, n.FreshPageP50, 100*n.FreshPageSpread)
	}
	if l := r.floorLine(); l != "" {
		fmt.Fprintf(w, "%s  \n", l)
	}
	fmt.Fprintf(w, "Pod: %s  \n", r.Pod)
	if r.ServerNice != 0 {
		fmt.Fprintf(w, "Page servers (the pod's daemon; `aquifer handle` for reap and firecracker-uffd) at nice %d, the VMs at 0\n\n", r.ServerNice)
	} else {
		fmt.Fprintf(w, "Page servers at the VMs' priority (nice 0)\n\n")
	}
	if len(r.Storages) > 0 {
		fmt.Fprintln(w, "| storage | what it is | measured through it (QD1, p50 / p90, model) | requests served |")
		fmt.Fprintln(w, "|---|---|---|---|")
		for _, s := range r.Storages {
			var pr []string
			for _, p := range s.Probes {
				pr = append(pr, p.String())
			}
			req := "-"
			if s.Requests != nil && s.Requests.Requests > 0 {
				req = fmt.Sprintf("%d, mean %.0f KiB", s.Requests.Requests, float64(s.Requests.Bytes)/float64(s.Requests.Requests)/1024)
			}
			fmt.Fprintf(w, "| `%s` | %s | %s | %s |\n", s.Name, s.Kind, orDash(strings.Join(pr, "; ")), req)
		}
		fmt.Fprintln(w)
	}
	levels := r.levels()
	// Geomeans.
	fmt.Fprintf(w, "Geometric-mean speedup of `aquifer`, T(strategy) / T(aquifer) from the p50s, with its 95%% bootstrap interval "+
		"(rounds and VMs resampled, paired by round); `*` marks an interval wider than ±%.0f%%. Plain names are on `%s`.\n\n", 100*r.CITarget, r.PrimaryStorage)
	fmt.Fprint(w, "| vs |")
	for _, c := range levels {
		fmt.Fprintf(w, " concurrency %d |", c)
	}
	fmt.Fprint(w, "\n|---|")
	for range levels {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w)
	var keys []string
	for _, c := range levels {
		for k := range r.ByConcurrency[strconv.Itoa(c)] {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := r.ByConcurrency[strconv.Itoa(levels[0])][keys[i]], r.ByConcurrency[strconv.Itoa(levels[0])][keys[j]]
		return a > b
	})
	for _, k := range keys {
		fmt.Fprintf(w, "| %s |", r.keyName(k))
		for _, c := range levels {
			cs := strconv.Itoa(c)
			v, ok := r.ByConcurrency[cs][k]
			if !ok {
				fmt.Fprint(w, " - |")
				continue
			}
			ci := r.ByConcurrencyCI[cs][k]
			mark := ""
			if !ci.Within(v, r.CITarget) {
				mark = " *"
			}
			fmt.Fprintf(w, " %.2fx [%.2f, %.2f]%s |", v, ci[0], ci[1], mark)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	// Per workload.
	for _, c := range levels {
		var wls, vars []string
		cell := map[[2]string]Result{}
		for _, x := range r.Results {
			if x.Concurrency != c {
				continue
			}
			if !slices.Contains(wls, x.Workload) {
				wls = append(wls, x.Workload)
			}
			if !slices.Contains(vars, x.Variant) {
				vars = append(vars, x.Variant)
			}
			cell[[2]string{x.Variant, x.Workload}] = x
		}
		fmt.Fprintf(w, "End-to-end p50 (ms) and T/T(aquifer) with its 95%% interval, concurrency %d:\n\n| strategy |", c)
		for _, wl := range wls {
			fmt.Fprintf(w, " %s |", wl)
		}
		fmt.Fprint(w, "\n|---|")
		for range wls {
			fmt.Fprint(w, "---|")
		}
		fmt.Fprintln(w)
		for _, v := range vars {
			fmt.Fprintf(w, "| `%s` |", v)
			for _, wl := range wls {
				x, ok := cell[[2]string{v, wl}]
				if !ok {
					fmt.Fprint(w, " - |")
					continue
				}
				if v == Aquifer {
					fmt.Fprintf(w, " %.1f |", float64(x.P50)/1e6)
				} else {
					fmt.Fprintf(w, " %.1f (%.2fx [%.2f, %.2f]) |", float64(x.P50)/1e6, x.SpeedupAq, x.SpeedupCI[0], x.SpeedupCI[1])
				}
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w)
	}
	r.writeBreakdown(w, levels[0], r.breakdownVariants(), true)
	fmt.Fprintln(w)
	r.writeGaps(w, levels[0], nil, true)
	r.writeMemory(w, true)
	fmt.Fprintf(w, "Outliers (outside 1.5 IQR of their group's log time, kept in every statistic): %d of %d samples.", len(r.Outliers), len(r.Samples))
	if len(r.Outliers) > 0 {
		fmt.Fprint(w, " Largest:")
		for i, o := range r.Outliers[:min(5, len(r.Outliers))] {
			sep := ";"
			if i == 0 {
				sep = ""
			}
			fmt.Fprintf(w, "%s c=%d %s `%s` round %d: %.1f ms (%.1fx its group's p50)", sep, o.Concurrency, o.Workload, o.Label, o.Round,
				float64(o.EndToEnd)/1e6, o.Factor)
		}
		fmt.Fprint(w, ".")
	}
	fmt.Fprintln(w)
}

func roundsText(m map[string]int) string {
	var ks []int
	for k := range m {
		n, _ := strconv.Atoi(k)
		ks = append(ks, n)
	}
	sort.Ints(ks)
	var out []string
	for _, k := range ks {
		out = append(out, fmt.Sprintf("%d at c=%d", m[strconv.Itoa(k)], k))
	}
	return orDash(strings.Join(out, ", "))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
