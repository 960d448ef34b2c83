package bench

import (
	"fmt"
	"io"
	"math"
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
	fmt.Fprintf(w, "Pod: %s\n\n", r.Pod)
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
	r.markdownBreakdown(w, levels[0])
	r.markdownMemory(w)
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

func (r *Report) markdownBreakdown(w io.Writer, c int) {
	prim := r.PrimaryStorage
	show := []string{Firecracker + "@" + prim, REAP + "@" + prim, FaaSnap + "@" + prim, REAP + "@" + StorageDRAM, Aquifer, AquiferEarly,
		AquiferRDMAOnly, Warm, NoRestore}
	floor, warm := map[string]int64{}, map[string]int64{}
	for _, x := range r.Results {
		if x.Concurrency == c && x.Strategy == NoRestore {
			floor[x.Workload] = x.P50
		}
		if x.Concurrency == c && x.Strategy == Warm {
			warm[x.Workload] = x.P50
		}
	}
	fmt.Fprintf(w, "The floor and where the time goes, concurrency %d (p50 of each field, ms). Stalls are first accesses on the critical vCPU "+
		"by page class (hot = recorded working set, cold = other non-zero, zero), with how many waited > 5 µs; pre-install, zero pages left to the kernel, "+
		"faults (hot/cold/zero) and cold bytes from the pager's own report; rest = think time, verification and the rest of the critical vCPU.\n\n", c)
	fmt.Fprintln(w, "| workload | strategy | e2e | − floor | − warm | restore | resume wait | hot stall | cold stall | zero stall | rest | pre-installed | zero → kernel | faults h/c/z | cold KiB |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, x := range r.Results {
		if x.Concurrency != c || x.Breakdown == nil || !slices.Contains(show, x.Variant) {
			continue
		}
		b := x.Breakdown
		f := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/1e6) }
		gap := func(m map[string]int64) string {
			if v, ok := m[x.Workload]; ok {
				return f(time.Duration(x.P50 - v))
			}
			return "-"
		}
		st := func(cl string) string { return fmt.Sprintf("%s (%d)", f(b.Stall[cl]), b.Slow[cl]) }
		rest := b.Critical - b.Stall[ClassHot] - b.Stall[ClassCold] - b.Stall[ClassZero]
		pi, zk, fl, cold := "-", "-", "-", "-"
		if p := b.Pager; p != nil {
			pi, zk = strconv.FormatUint(p.PreinstallPages, 10), strconv.FormatUint(p.ZeroToKernel, 10)
			fl = fmt.Sprintf("%d/%d/%d", p.HotFaults, p.ColdFaults, p.ZeroFaults)
			cold = strconv.FormatUint(p.ColdBytes>>10, 10)
		} else if b.Handler > 0 {
			fl = fmt.Sprintf("%d (handler)", b.Handler)
		}
		fmt.Fprintf(w, "| %s | `%s` | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", x.Workload, x.Variant,
			f(time.Duration(x.P50)), gap(floor), gap(warm), f(b.Restore), f(b.ResumeWait), st(ClassHot), st(ClassCold), st(ClassZero), f(rest),
			pi, zk, fl, cold)
	}
	fmt.Fprintln(w)
}

func (r *Report) markdownMemory(w io.Writer) {
	if len(r.Snapshots) == 0 {
		return
	}
	type acc struct{ host, storage, cxl, mn, handler, priv, file []float64 }
	by := map[string]*acc{}
	var order []string
	get := func(l string) *acc {
		if by[l] == nil {
			by[l] = &acc{}
			order = append(order, l)
		}
		return by[l]
	}
	for _, s := range r.Snapshots {
		if s.Strategy == Warm || s.Strategy == NoRestore {
			continue
		}
		a := get(s.Strategy)
		a.host, a.storage, a.cxl = append(a.host, float64(s.HostDRAM)), append(a.storage, float64(s.Storage)), append(a.cxl, float64(s.CXL))
		a.mn, a.handler = append(a.mn, float64(s.MemoryNodes)), append(a.handler, float64(s.PerVMHandler))
	}
	lowest := math.MaxInt
	for _, x := range r.Results {
		lowest = min(lowest, x.Concurrency)
	}
	for _, x := range r.Results {
		if x.Concurrency != lowest {
			continue
		}
		a := get(x.Variant)
		a.priv, a.file = append(a.priv, float64(x.ResidentPrivateP50)), append(a.file, float64(x.ResidentFileP50))
		if x.Strategy == Warm {
			a.host = append(a.host, float64(x.ResidentPrivateP50))
		}
	}
	mean := func(v []float64) string {
		if len(v) == 0 {
			return "-"
		}
		s := 0.0
		for _, x := range v {
			s += x
		}
		return fmt.Sprintf("%.1f", s/float64(len(v))/(1<<20))
	}
	fmt.Fprintln(w, "Memory per snapshot and per restored VM, MiB, mean over the workloads: host DRAM a snapshot holds between restores "+
		"(tmpfs files for `@dram`; a whole VM for `warm`; the page cache of cold storage is transient and not counted), bytes on storage, "+
		"in the pod's CXL device and on memory nodes (cold × replicas); per VM, the guest memory resident at the end of the run (private, and "+
		"page cache mapped into it) and what the handler holds per VM (REAP's working-set buffer).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| strategy | host DRAM / snapshot | storage / snapshot | CXL / snapshot | memory nodes / snapshot | VM private | VM page cache mapped | handler / VM |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, l := range order {
		if l == NoRestore {
			continue
		}
		a := by[l]
		fmt.Fprintf(w, "| `%s` | %s | %s | %s | %s | %s | %s | %s |\n", l, mean(a.host), mean(a.storage), mean(a.cxl), mean(a.mn), mean(a.priv),
			mean(a.file), mean(a.handler))
	}
	fmt.Fprintln(w)
}
