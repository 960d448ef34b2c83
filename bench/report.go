package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"
)

// Result aggregates the samples of one (workload, strategy, concurrency).
type Result struct {
	Workload    string  `json:"workload"`
	Strategy    string  `json:"strategy"`
	Concurrency int     `json:"concurrency"`
	Samples     int     `json:"samples"`
	P50         int64   `json:"end_to_end_p50_ns"`
	P99         int64   `json:"end_to_end_p99_ns"`
	RestoreP50  int64   `json:"restore_p50_ns"`
	FirstP50    int64   `json:"first_touch_p50_ns"`
	ExecP50     int64   `json:"execution_p50_ns"`
	FaultsP50   uint64  `json:"handler_faults_p50,omitempty"`
	SpeedupAq   float64 `json:"aquifer_speedup,omitempty"` // T(this) / T(aquifer)
	VerifiedP50 int     `json:"verified_pages_p50"`
}

// Speedups are geometric means over workloads of T(strategy)/T(aquifer).
type Speedups map[string]float64

// Report is the JSON document `aquifer bench --json` writes.
type Report struct {
	Corpus  string `json:"corpus"`
	Pod     string `json:"pod"`
	Machine string `json:"machine"`
	Date    string `json:"date"`
	Runs    int    `json:"runs"`
	// GeomeanSpeedup is at concurrency 1 (or the lowest level run).
	GeomeanSpeedup Speedups            `json:"geomean_speedup"`
	ByConcurrency  map[string]Speedups `json:"geomean_speedup_by_concurrency"`
	Results        []Result            `json:"results"`
	Samples        []Sample            `json:"samples,omitempty"`
}

func pct(d []int64, p float64) int64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Aggregate builds the report from samples.
func Aggregate(samples []Sample, corpusKind, pod string, runs int) *Report {
	type key struct {
		w, s string
		c    int
	}
	groups := map[key][]Sample{}
	for _, s := range samples {
		k := key{s.Workload, s.Strategy, s.Concurrency}
		groups[k] = append(groups[k], s)
	}
	rep := &Report{Corpus: corpusKind, Pod: pod, Runs: runs, Date: time.Now().UTC().Format(time.RFC3339),
		Machine: machine(), ByConcurrency: map[string]Speedups{}}
	for k, g := range groups {
		var e2e, rst, first, exec []int64
		var faults []int64
		var ver []int64
		for _, s := range g {
			e2e = append(e2e, int64(s.EndToEnd))
			rst = append(rst, int64(s.Restore))
			first = append(first, int64(s.FirstTouch))
			exec = append(exec, int64(s.EndToEnd-s.Restore))
			faults = append(faults, int64(s.Faults))
			ver = append(ver, int64(s.Verified))
		}
		rep.Results = append(rep.Results, Result{Workload: k.w, Strategy: k.s, Concurrency: k.c, Samples: len(g),
			P50: pct(e2e, 50), P99: pct(e2e, 99), RestoreP50: pct(rst, 50), FirstP50: pct(first, 50),
			ExecP50: pct(exec, 50), FaultsP50: uint64(pct(faults, 50)), VerifiedP50: int(pct(ver, 50))})
	}
	order := map[string]int{}
	for i, s := range AllStrategies {
		order[s] = i
	}
	sort.Slice(rep.Results, func(i, j int) bool {
		a, b := rep.Results[i], rep.Results[j]
		if a.Concurrency != b.Concurrency {
			return a.Concurrency < b.Concurrency
		}
		if a.Workload != b.Workload {
			return a.Workload < b.Workload
		}
		return order[a.Strategy] < order[b.Strategy]
	})
	// Speedups of aquifer over each strategy.
	aq := map[[2]string]int64{}
	for _, r := range rep.Results {
		if r.Strategy == Aquifer {
			aq[[2]string{r.Workload, strconv.Itoa(r.Concurrency)}] = r.P50
		}
	}
	logs := map[int]map[string][]float64{}
	for i := range rep.Results {
		r := &rep.Results[i]
		t, ok := aq[[2]string{r.Workload, strconv.Itoa(r.Concurrency)}]
		if !ok || t == 0 {
			continue
		}
		r.SpeedupAq = float64(r.P50) / float64(t)
		if logs[r.Concurrency] == nil {
			logs[r.Concurrency] = map[string][]float64{}
		}
		logs[r.Concurrency][r.Strategy] = append(logs[r.Concurrency][r.Strategy], math.Log(r.SpeedupAq))
	}
	minC := math.MaxInt
	for c, m := range logs {
		sp := Speedups{}
		for s, l := range m {
			if s == Aquifer {
				continue
			}
			sum := 0.0
			for _, x := range l {
				sum += x
			}
			sp["vs_"+s] = math.Exp(sum / float64(len(l)))
		}
		// The better of REAP and FaaSnap.
		if a, ok := sp["vs_reap"]; ok {
			if b, ok := sp["vs_faasnap"]; ok {
				sp["vs_best_baseline"] = min(a, b)
			}
		}
		rep.ByConcurrency[strconv.Itoa(c)] = sp
		minC = min(minC, c)
	}
	if minC != math.MaxInt {
		rep.GeomeanSpeedup = rep.ByConcurrency[strconv.Itoa(minC)]
	}
	return rep
}

func machine() string {
	host, _ := os.Hostname()
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range splitLines(string(b)) {
			if len(line) > 10 && line[:10] == "model name" {
				cpu = line[13:]
				break
			}
		}
	}
	return fmt.Sprintf("%s, %s, %d CPUs", host, cpu, numCPU())
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// WriteTable prints the results.
func (r *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "corpus: %s; pod: %s; %s; %d rounds\n", r.Corpus, r.Pod, r.Machine, r.Runs)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "conc\tworkload\tstrategy\tp50\tp99\trestore\tfirst touch\texec\tfaults\tT/T(aquifer)\t")
	for _, x := range r.Results {
		sp := ""
		if x.SpeedupAq > 0 {
			sp = fmt.Sprintf("%.2fx", x.SpeedupAq)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%v\t%v\t%v\t%v\t%v\t%d\t%s\t\n", x.Concurrency, x.Workload, x.Strategy,
			ms(x.P50), ms(x.P99), ms(x.RestoreP50), ms(x.FirstP50), ms(x.ExecP50), x.FaultsP50, sp)
	}
	tw.Flush()
	keys := make([]int, 0, len(r.ByConcurrency))
	for c := range r.ByConcurrency {
		n, _ := strconv.Atoi(c)
		keys = append(keys, n)
	}
	sort.Ints(keys)
	for _, c := range keys {
		sp := r.ByConcurrency[strconv.Itoa(c)]
		names := make([]string, 0, len(sp))
		for k := range sp {
			names = append(names, k)
		}
		sort.Strings(names)
		fmt.Fprintf(w, "geomean speedup of aquifer at concurrency %d:", c)
		for _, k := range names {
			fmt.Fprintf(w, " %s %.2fx", k, sp[k])
		}
		fmt.Fprintln(w)
	}
}

func ms(ns int64) string { return fmt.Sprintf("%.2fms", float64(ns)/1e6) }

// WriteJSON writes the report atomically.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
