package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// writeGrid prints a table as aligned text or as Markdown.
func writeGrid(w io.Writer, header []string, rows [][]string, markdown bool) {
	if markdown {
		fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat("---|", len(header)))
		for _, r := range rows {
			fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
		}
		fmt.Fprintln(w)
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(header, "\t")+"\t")
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t")+"\t")
	}
	tw.Flush()
}

var breakdownHeader = []string{"conc", "workload", "strategy", "e2e", "− floor", "− warm", "restore", "resume wait", "hot stall",
	"cold stall", "zero stall", "rest", "pre-installed", "pre-install GB/s (of floor)", "zero → kernel", "faults h/c/z", "cold KiB"}

// breakdownRows are the floor-and-breakdown rows (ms) of the results at
// concurrency c (all levels if c <= 0) whose variant show accepts.
func (r *Report) breakdownRows(c int, show func(string) bool) [][]string {
	type key struct {
		c int
		w string
	}
	floor, warm := map[key]int64{}, map[key]int64{}
	for _, x := range r.Results {
		switch x.Strategy {
		case NoRestore:
			floor[key{x.Concurrency, x.Workload}] = x.P50
		case Warm:
			warm[key{x.Concurrency, x.Workload}] = x.P50
		}
	}
	f := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e6) }
	var rows [][]string
	for _, x := range r.Results {
		b := x.Breakdown
		if b == nil || (c > 0 && x.Concurrency != c) || (show != nil && !show(x.Variant)) {
			continue
		}
		k := key{x.Concurrency, x.Workload}
		gap := func(m map[key]int64) string {
			if v, ok := m[k]; ok {
				return f(time.Duration(x.P50 - v))
			}
			return "-"
		}
		st := func(cl string) string { return fmt.Sprintf("%s (%d)", f(b.Stall[cl]), b.Slow[cl]) }
		rest := b.Critical - b.Stall[ClassHot] - b.Stall[ClassCold] - b.Stall[ClassZero]
		pi, rate, zk, fl, cold := "-", "-", "-", "-", "-"
		if x.PreinstallRateP50 > 0 {
			rate = fmt.Sprintf("%.2f", x.PreinstallRateP50/1e9)
			if x.PreinstallOfFloor > 0 {
				rate += fmt.Sprintf(" (%.0f%%)", 100*x.PreinstallOfFloor)
			}
		}
		if p := b.Pager; p != nil {
			pi, zk = strconv.FormatUint(p.PreinstallPages, 10), strconv.FormatUint(p.ZeroToKernel, 10)
			fl = fmt.Sprintf("%d/%d/%d", p.HotFaults, p.ColdFaults, p.ZeroFaults)
			cold = strconv.FormatUint(p.ColdBytes>>10, 10)
		} else if b.Handler > 0 {
			fl = fmt.Sprintf("%d (handler)", b.Handler)
		}
		rows = append(rows, []string{strconv.Itoa(x.Concurrency), x.Workload, x.Variant, f(time.Duration(x.P50)), gap(floor), gap(warm),
			f(b.Restore), f(b.ResumeWait), st(ClassHot), st(ClassCold), st(ClassZero), f(rest), pi, rate, zk, fl, cold})
	}
	return rows
}

// writeBreakdown prints the floor and, per restore, where the time went.
func (r *Report) writeBreakdown(w io.Writer, c int, show func(string) bool, markdown bool) {
	fmt.Fprintln(w, "The floor and where each restore's time goes (p50 of each field, ms). Stalls are first accesses on the critical vCPU "+
		"by page class (hot = recorded working set, cold = other non-zero, zero), with how many waited > 5 µs; pre-install, zero pages "+
		"left to the kernel, faults (hot/cold/zero) and cold bytes from the pager's own report; rest = think time, verification and the rest "+
		"of the critical vCPU; e2e = restore + resume wait + critical vCPU.")
	fmt.Fprintln(w)
	writeGrid(w, breakdownHeader, r.breakdownRows(c, show), markdown)
}

var memoryHeader = []string{"strategy", "host DRAM / snapshot", "storage / snapshot", "CXL / snapshot", "memory nodes / snapshot",
	"VM private", "VM page cache mapped", "handler / VM"}

// memoryRows are the memory table's rows: MiB, means over the workloads.
func (r *Report) memoryRows() [][]string {
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
			continue // a warm VM's memory comes from its samples
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
		if x.Concurrency != lowest || x.Strategy == NoRestore {
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
	var rows [][]string
	for _, l := range order {
		a := by[l]
		rows = append(rows, []string{l, mean(a.host), mean(a.storage), mean(a.cxl), mean(a.mn), mean(a.priv), mean(a.file), mean(a.handler)})
	}
	return rows
}

// writeMemory prints the DRAM each strategy holds, per snapshot and per VM.
func (r *Report) writeMemory(w io.Writer, markdown bool) {
	if len(r.Snapshots) == 0 {
		return
	}
	fmt.Fprintln(w, "Memory per snapshot and per restored VM, MiB, mean over the workloads: host DRAM a snapshot holds between restores "+
		"(tmpfs files for @dram; a whole VM for warm; the page cache of cold storage is transient and not counted), bytes on storage, "+
		"in the pod's CXL device and on memory nodes (cold × replicas); per VM (lowest concurrency), the guest memory resident at the end "+
		"(private, and page cache mapped into it) and what the handler holds per VM (REAP's working-set buffer).")
	fmt.Fprintln(w)
	writeGrid(w, memoryHeader, r.memoryRows(), markdown)
}

// breakdownVariants are the variants docs/evaluation.md breaks down.
func (r *Report) breakdownVariants() func(string) bool {
	prim := r.PrimaryStorage
	show := []string{Firecracker + "@" + prim, REAP + "@" + prim, FaaSnap + "@" + prim, REAP + "@" + StorageDRAM, Aquifer, AquiferEarly,
		AquiferRDMAOnly, Warm, NoRestore}
	return func(v string) bool { return slices.Contains(show, v) }
}
