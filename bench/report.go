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
	"strings"
	"text/tabwriter"
	"time"
)

// Result aggregates the samples of one (workload, variant, concurrency).
type Result struct {
	Workload    string `json:"workload"`
	Strategy    string `json:"strategy"`
	Storage     string `json:"storage,omitempty"`
	Variant     string `json:"variant"` // strategy[@storage]
	Concurrency int    `json:"concurrency"`
	Samples     int    `json:"samples"`
	P50         int64  `json:"end_to_end_p50_ns"`
	// P50CI is the bootstrap 95% interval of P50.
	P50CI       [2]int64 `json:"end_to_end_p50_ci95_ns"`
	P99         int64    `json:"end_to_end_p99_ns"`
	RestoreP50  int64    `json:"restore_p50_ns"`
	FirstP50    int64    `json:"first_touch_p50_ns"`
	ExecP50     int64    `json:"execution_p50_ns"`
	FaultsP50   uint64   `json:"handler_faults_p50,omitempty"`
	SpeedupAq   float64  `json:"aquifer_speedup,omitempty"` // T(this) / T(aquifer)
	SpeedupCI   CI       `json:"aquifer_speedup_ci95,omitempty"`
	VerifiedP50 int      `json:"verified_pages_p50"`
	Outliers    int      `json:"outliers"`
	// Breakdown holds the p50 of every part of the restores' breakdown.
	Breakdown *BreakdownP50 `json:"breakdown_p50,omitempty"`
	// Guest memory resident at the end of the run, p50.
	ResidentPrivateP50 uint64 `json:"resident_private_p50_bytes"`
	ResidentFileP50    uint64 `json:"resident_file_mapped_p50_bytes"`
	// CPU per VM, p50: the VM process, its serving side, the vCPUs' summed
	// replay time.
	GuestCPUP50   time.Duration `json:"guest_cpu_p50_ns,omitempty"`
	ServerCPUP50  time.Duration `json:"server_cpu_p50_ns,omitempty"`
	VCPUBusyP50   time.Duration `json:"vcpu_busy_p50_ns,omitempty"`
	VCPUCPUP50    time.Duration `json:"vcpu_cpu_p50_ns,omitempty"`
	VCPUCPUMaxP50 time.Duration `json:"vcpu_cpu_max_p50_ns,omitempty"`
	// PreinstallRateP50 is the p50 over the samples of pre-installed bytes
	// over pre-install time (aquifer strategies: the pager's whole
	// pre-install, tier window and verification included), and
	// PreinstallOfFloor its fraction of the run's UFFDIO_COPY floor at this
	// concurrency level (floor.go).
	PreinstallRateP50 float64 `json:"preinstall_bytes_per_s_p50,omitempty"`
	PreinstallOfFloor float64 `json:"preinstall_fraction_of_floor,omitempty"`
}

// BreakdownP50 is the per-field median of the samples' breakdowns.
type BreakdownP50 struct {
	Restore    time.Duration            `json:"restore_ns"`
	ResumeWait time.Duration            `json:"resume_wait_ns"`
	Critical   time.Duration            `json:"critical_vcpu_ns"`
	Stall      map[string]time.Duration `json:"stall_ns"` // critical vCPU, per class
	Pages      map[string]int           `json:"pages"`
	Slow       map[string]int           `json:"slow_touches"`
	Pager      *PagerCounts             `json:"pager,omitempty"`
	Handler    uint64                   `json:"handler_faults,omitempty"`
}

// Speedups are geometric means over workloads of T(strategy)/T(aquifer).
type Speedups map[string]float64

// Load is the machine's load average around a run.
type Load struct {
	Before string `json:"before"`
	After  string `json:"after"`
}

// Report is the JSON document `aquifer bench --json` writes.
type Report struct {
	Corpus  string `json:"corpus"`
	Pod     string `json:"pod"`
	Machine string `json:"machine"`
	Date    string `json:"date"`
	// Runs is the number of rounds asked for (0: auto); RoundsRun what ran.
	Runs      int            `json:"runs"`
	RoundsRun map[string]int `json:"rounds_by_concurrency,omitempty"`
	Command   string         `json:"command,omitempty"`
	// ServerNice is the page servers' nice value (Options.ServerNice; 0
	// in reports written before it was recorded).
	ServerNice int `json:"server_nice,omitempty"`
	// Error is why the run stopped early (the report then holds what was
	// measured until then).
	Error          string        `json:"error,omitempty"`
	Load           *Load         `json:"load,omitempty"`
	Wall           time.Duration `json:"wall_ns,omitempty"`
	PrimaryStorage string        `json:"primary_storage,omitempty"`
	Storages       []StorageInfo `json:"storages,omitempty"`
	// GeomeanSpeedup is at concurrency 1 (or the lowest level run).
	GeomeanSpeedup   Speedups            `json:"geomean_speedup"`
	GeomeanSpeedupCI map[string]CI       `json:"geomean_speedup_ci95"`
	ByConcurrency    map[string]Speedups `json:"geomean_speedup_by_concurrency"`
	// ByConcurrencyCI are the 95% bootstrap intervals of ByConcurrency.
	ByConcurrencyCI map[string]map[string]CI `json:"geomean_speedup_ci95_by_concurrency"`
	// CITarget is the half-width (relative) every interval should be
	// within; Wide lists "c=N key" for those that are not.
	CITarget float64  `json:"ci_target"`
	Wide     []string `json:"intervals_wider_than_target"`
	// Noise is the calibration loops over the run (and per level).
	Noise              *Noise            `json:"machine_noise,omitempty"`
	NoiseByConcurrency map[string]*Noise `json:"machine_noise_by_concurrency,omitempty"`
	Calibration        []Calibration     `json:"calibration,omitempty"`
	Outliers           []Outlier         `json:"outliers,omitempty"`
	Snapshots          []SnapshotMemory  `json:"snapshot_memory,omitempty"`
	// The UFFDIO_COPY floor of the run and the pre-install against it
	// (floor.go): Floor says how each is computed.
	CopyFloor          float64            `json:"uffdio_copy_floor_bytes_per_s,omitempty"`
	CopyPerPage        float64            `json:"uffdio_copy_per_page_bytes_per_s,omitempty"`
	PreinstallRate     float64            `json:"preinstall_bytes_per_s,omitempty"`
	PreinstallOfFloor  float64            `json:"preinstall_fraction_of_floor,omitempty"`
	PreinstallFloorByC map[string]float64 `json:"preinstall_fraction_of_floor_by_concurrency,omitempty"`
	// GapToWarm is what separates each aquifer strategy from warm, per
	// workload (gap.go).
	GapToWarm []Gap    `json:"gap_to_warm,omitempty"`
	Results   []Result `json:"results"`
	Samples   []Sample `json:"samples,omitempty"`
}

// BootstrapReps is the number of bootstrap replicates of a report.
const BootstrapReps = 2000

func pct(d []int64, p float64) int64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func medianInt(d []int64) int64 {
	f := make([]float64, len(d))
	for i, x := range d {
		f[i] = float64(x)
	}
	return int64(math.Round(median(f)))
}

// Aggregate builds the report from samples; the primary storage is the
// first one the samples name.
func Aggregate(samples []Sample, corpusKind, pod string, runs int) *Report {
	primary := ""
	for _, s := range samples {
		if s.Storage != "" {
			primary = s.Storage
			break
		}
	}
	return AggregateWith(samples, AggregateOptions{Corpus: corpusKind, Pod: pod, Runs: runs, PrimaryStorage: primary})
}

// AggregateOptions configure AggregateWith.
type AggregateOptions struct {
	Corpus, Pod    string
	Runs           int
	PrimaryStorage string
	CITarget       float64 // default 0.10
	Reps           int     // bootstrap replicates (default BootstrapReps)
	Seed           uint64
}

// AggregateWith builds the report from samples.
func AggregateWith(samples []Sample, o AggregateOptions) *Report {
	if o.CITarget <= 0 {
		o.CITarget = 0.10
	}
	if o.Reps == 0 {
		o.Reps = BootstrapReps
	}
	type key struct {
		w, l string
		c    int
	}
	groups := map[key][]Sample{}
	levels := map[int][]Sample{}
	for _, s := range samples {
		k := key{s.Workload, s.Label(), s.Concurrency}
		groups[k] = append(groups[k], s)
		levels[s.Concurrency] = append(levels[s.Concurrency], s)
	}
	rep := &Report{Corpus: o.Corpus, Pod: o.Pod, Runs: o.Runs, Date: time.Now().UTC().Format(time.RFC3339),
		Machine: machine(), ByConcurrency: map[string]Speedups{}, ByConcurrencyCI: map[string]map[string]CI{},
		PrimaryStorage: o.PrimaryStorage, CITarget: o.CITarget, Wide: []string{}}
	stats := map[int]*levelStats{}
	for c, l := range levels {
		st := bootstrap(l, o.PrimaryStorage, o.Reps, o.Seed+uint64(c))
		stats[c] = st
		cs := strconv.Itoa(c)
		rep.ByConcurrency[cs] = st.speedup
		rep.ByConcurrencyCI[cs] = st.speedupCI
		for _, k := range notWithin(st, o.CITarget) {
			rep.Wide = append(rep.Wide, fmt.Sprintf("c=%d %s", c, k))
		}
	}
	sort.Strings(rep.Wide)
	for k, g := range groups {
		var e2e, rst, first, exec, faults, ver, priv, file, gcpu, scpu, busy, vcpu, vmax []int64
		var rate []float64
		for _, s := range g {
			if v := s.preinstallRate(); v > 0 {
				rate = append(rate, v)
			}
			vcpu = append(vcpu, int64(s.VCPUCPU))
			vmax = append(vmax, int64(s.VCPUCPUMax))
			gcpu = append(gcpu, int64(s.GuestCPU))
			scpu = append(scpu, int64(s.ServerCPU))
			busy = append(busy, int64(s.VCPUBusy))
			e2e = append(e2e, int64(s.EndToEnd))
			rst = append(rst, int64(s.Restore))
			first = append(first, int64(s.FirstTouch))
			exec = append(exec, int64(s.EndToEnd-s.Restore))
			faults = append(faults, int64(s.Faults))
			ver = append(ver, int64(s.Verified))
			if s.Resident != nil {
				priv = append(priv, int64(s.Resident.Private))
				file = append(file, int64(s.Resident.FileMapped))
			}
		}
		st, sto := splitLabel(k.l)
		r := Result{Workload: k.w, Strategy: st, Storage: sto, Variant: k.l, Concurrency: k.c, Samples: len(g),
			P50: medianInt(e2e), P99: pct(e2e, 99), RestoreP50: medianInt(rst), FirstP50: medianInt(first),
			ExecP50: medianInt(exec), FaultsP50: uint64(medianInt(faults)), VerifiedP50: int(medianInt(ver)),
			ResidentPrivateP50: uint64(medianInt(priv)), ResidentFileP50: uint64(medianInt(file)),
			Breakdown: breakdownP50(g), GuestCPUP50: time.Duration(medianInt(gcpu)), ServerCPUP50: time.Duration(medianInt(scpu)),
			VCPUBusyP50: time.Duration(medianInt(busy)), VCPUCPUP50: time.Duration(medianInt(vcpu)),
			VCPUCPUMaxP50: time.Duration(medianInt(vmax))}
		if len(rate) > 0 {
			r.PreinstallRateP50 = median(rate)
		}
		ls := stats[k.c]
		if ci, ok := ls.p50CI[[2]string{k.w, k.l}]; ok {
			r.P50CI = [2]int64{int64(ci[0]), int64(ci[1])}
		}
		if v, ok := ls.ratio[[2]string{k.w, k.l}]; ok {
			r.SpeedupAq = v
			r.SpeedupCI = ls.ratioCI[[2]string{k.w, k.l}]
		}
		out := outliers(g)
		r.Outliers = len(out)
		rep.Outliers = append(rep.Outliers, out...)
		rep.Results = append(rep.Results, r)
	}
	order := map[string]int{}
	for i, s := range AllStrategies {
		order[s] = 10 * i
	}
	for i, s := range AllStorages {
		order["@"+s] = i + 1
	}
	rank := func(r Result) int { return order[r.Strategy] + order["@"+r.Storage] }
	sort.Slice(rep.Results, func(i, j int) bool {
		a, b := rep.Results[i], rep.Results[j]
		if a.Concurrency != b.Concurrency {
			return a.Concurrency < b.Concurrency
		}
		if a.Workload != b.Workload {
			return a.Workload < b.Workload
		}
		return rank(a) < rank(b)
	})
	sort.Slice(rep.Outliers, func(i, j int) bool { return rep.Outliers[i].Factor > rep.Outliers[j].Factor })
	minC := math.MaxInt
	for c := range levels {
		minC = min(minC, c)
	}
	if minC != math.MaxInt {
		rep.GeomeanSpeedup = rep.ByConcurrency[strconv.Itoa(minC)]
		rep.GeomeanSpeedupCI = rep.ByConcurrencyCI[strconv.Itoa(minC)]
	}
	rep.GapToWarm = rep.gaps()
	return rep
}

func breakdownP50(g []Sample) *BreakdownP50 {
	var rst, wait, crit []int64
	stall, pages, slow := map[string][]int64{}, map[string][]int64{}, map[string][]int64{}
	var pg [8][]int64
	var hf []int64
	n := 0
	for _, s := range g {
		b := s.Breakdown
		if b == nil {
			continue
		}
		n++
		rst = append(rst, int64(s.Restore))
		wait = append(wait, int64(b.ResumeWait))
		crit = append(crit, int64(b.Critical))
		for _, c := range []string{ClassHot, ClassCold, ClassZero} {
			x := b.Classes[c]
			stall[c] = append(stall[c], int64(x.Stall))
			pages[c] = append(pages[c], int64(x.Pages))
			slow[c] = append(slow[c], int64(x.Slow))
		}
		hf = append(hf, int64(b.HandlerFaults))
		if p := b.Pager; p != nil {
			for i, v := range []int64{int64(p.Preinstall), int64(p.PreinstallPages), int64(p.ZeroToKernel), int64(p.HotFaults),
				int64(p.ColdFaults), int64(p.ZeroFaults), int64(p.ColdBytes), int64(p.ColdRead)} {
				pg[i] = append(pg[i], v)
			}
		}
	}
	if n == 0 {
		return nil
	}
	out := &BreakdownP50{Restore: time.Duration(medianInt(rst)), ResumeWait: time.Duration(medianInt(wait)),
		Critical: time.Duration(medianInt(crit)), Stall: map[string]time.Duration{}, Pages: map[string]int{}, Slow: map[string]int{},
		Handler: uint64(medianInt(hf))}
	for c := range stall {
		out.Stall[c] = time.Duration(medianInt(stall[c]))
		out.Pages[c] = int(medianInt(pages[c]))
		out.Slow[c] = int(medianInt(slow[c]))
	}
	if len(pg[0]) > 0 {
		m := func(i int) int64 { return medianInt(pg[i]) }
		out.Pager = &PagerCounts{Preinstall: time.Duration(m(0)), PreinstallPages: uint64(m(1)), ZeroToKernel: uint64(m(2)),
			HotFaults: uint64(m(3)), ColdFaults: uint64(m(4)), ZeroFaults: uint64(m(5)), ColdBytes: uint64(m(6)), ColdRead: time.Duration(m(7))}
	}
	return out
}

// AttachRun adds what a run measured besides samples.
func (r *Report) AttachRun(res *RunResult) {
	r.Storages = res.Storages
	r.Snapshots = res.Snapshots
	r.Calibration = res.Calibration
	r.Noise = summarise(res.Calibration)
	r.NoiseByConcurrency = map[string]*Noise{}
	by := map[int][]Calibration{}
	for _, c := range res.Calibration {
		by[c.Concurrency] = append(by[c.Concurrency], c)
	}
	for c, l := range by {
		r.NoiseByConcurrency[strconv.Itoa(c)] = summarise(l)
	}
	r.RoundsRun = map[string]int{}
	for c, n := range res.Rounds {
		r.RoundsRun[strconv.Itoa(c)] = n
	}
	r.attachFloor(res.Samples)
}

func machine() string {
	host, _ := os.Hostname()
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				if _, v, ok := strings.Cut(line, ":"); ok {
					cpu = strings.TrimSpace(v)
				}
				break
			}
		}
	}
	return fmt.Sprintf("%s, %s, %d CPUs", host, cpu, numCPU())
}

// LoadAverage returns /proc/loadavg's first three fields.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func ms(ns int64) string { return fmt.Sprintf("%.2f", float64(ns)/1e6) }

func (r *Report) levels() []int {
	var keys []int
	for c := range r.ByConcurrency {
		n, _ := strconv.Atoi(c)
		keys = append(keys, n)
	}
	sort.Ints(keys)
	return keys
}

// WriteTable prints the results.
func (r *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "corpus: %s; pod: %s\nmachine: %s\n", r.Corpus, r.Pod, r.Machine)
	if r.Command != "" {
		fmt.Fprintf(w, "command: %s\n", r.Command)
	}
	if len(r.RoundsRun) > 0 {
		fmt.Fprintf(w, "rounds per concurrency level: %v (asked: %s)\n", r.RoundsRun, runsText(r.Runs))
	}
	for _, s := range r.Storages {
		fmt.Fprintf(w, "storage %s: %s\n", s.Name, s.Kind)
		for _, p := range s.Probes {
			fmt.Fprintf(w, "    measured through it: %v\n", p)
		}
		if s.Requests != nil && s.Requests.Requests > 0 {
			fmt.Fprintf(w, "    served %d requests, mean %.0f KiB\n", s.Requests.Requests, float64(s.Requests.Bytes)/float64(s.Requests.Requests)/1024)
		}
	}
	if n := r.Noise; n != nil {
		fmt.Fprintf(w, "machine noise (fixed calibration loops, %d runs interleaved with the batches): CPU loop p50 %v, spread p5..p95 %.0f%%; fresh-page first touch p50 %v, spread %.0f%%\n",
			n.Runs, n.CPUP50.Round(time.Microsecond), 100*n.CPUSpread, n.FreshPageP50, 100*n.FreshPageSpread)
	}
	if l := r.floorLine(); l != "" {
		fmt.Fprintln(w, l)
	}
	if r.Load != nil {
		fmt.Fprintf(w, "load average before %s, after %s; wall time %v\n", r.Load.Before, r.Load.After, r.Wall.Round(time.Second))
	}
	fmt.Fprintln(w, "\nend-to-end time, ms (p50 with its 95% bootstrap interval over rounds and VMs); T/T(aquifer) with its interval")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "conc\tworkload\tstrategy\tp50\t95% CI\tp99\trestore\texec\tfaults\tT/T(aquifer)\t95% CI\toutliers\t")
	for _, x := range r.Results {
		sp, spci := "", ""
		if x.SpeedupAq > 0 {
			sp = fmt.Sprintf("%.2fx", x.SpeedupAq)
			spci = fmt.Sprintf("%.2f-%.2f", x.SpeedupCI[0], x.SpeedupCI[1])
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s-%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t\n", x.Concurrency, x.Workload, x.Variant,
			ms(x.P50), ms(x.P50CI[0]), ms(x.P50CI[1]), ms(x.P99), ms(x.RestoreP50), ms(x.ExecP50), x.FaultsP50, sp, spci, x.Outliers)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, c := range r.levels() {
		sp := r.ByConcurrency[strconv.Itoa(c)]
		ci := r.ByConcurrencyCI[strconv.Itoa(c)]
		names := make([]string, 0, len(sp))
		for k := range sp {
			names = append(names, k)
		}
		sort.Strings(names)
		fmt.Fprintf(w, "geomean speedup of aquifer at concurrency %d (95%% CI; * = wider than ±%.0f%%):\n", c, 100*r.CITarget)
		for _, k := range names {
			mark := ""
			if iv, ok := ci[k]; ok && !iv.Within(sp[k], r.CITarget) {
				mark = " *"
			}
			fmt.Fprintf(w, "  %-28s %6.2fx  [%.2f, %.2f]%s\n", k, sp[k], ci[k][0], ci[k][1], mark)
		}
	}
	if len(r.Wide) > 0 {
		fmt.Fprintf(w, "intervals wider than ±%.0f%%: %s\n", 100*r.CITarget, strings.Join(r.Wide, ", "))
	} else {
		fmt.Fprintf(w, "every geomean's interval is within ±%.0f%%\n", 100*r.CITarget)
	}
	fmt.Fprintln(w)
	r.writeBreakdown(w, 0, nil, false)
	fmt.Fprintln(w)
	r.writeGaps(w, 0, nil, false)
	fmt.Fprintln(w)
	r.writeMemory(w, false)
	if len(r.Outliers) > 0 {
		fmt.Fprintf(w, "\noutliers (outside 1.5 IQR of their group's log time; kept in every statistic): %d; largest:\n", len(r.Outliers))
		for _, o := range r.Outliers[:min(8, len(r.Outliers))] {
			fmt.Fprintf(w, "  c=%d %s %s round %d vm %d: %s ms, %.2fx its group's p50\n", o.Concurrency, o.Workload, o.Label, o.Round, o.VM,
				ms(o.EndToEnd), o.Factor)
		}
	}
}

func runsText(n int) string {
	if n <= 0 {
		return "auto"
	}
	return strconv.Itoa(n)
}

// WriteJSON writes the report atomically (temp file, fsync, rename, fsync
// of the directory).
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, append(b, '\n'))
}

// ReadReport reads a report written by WriteJSON.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s is not a bench report: %w", path, err)
	}
	return &r, nil
}

// Reaggregate recomputes a report's statistics and tables from its
// samples (with this build's code), keeping what the run recorded.
func (r *Report) Reaggregate() (*Report, error) {
	if len(r.Samples) == 0 {
		return nil, fmt.Errorf("the report has no samples (written without them?)")
	}
	n := AggregateWith(r.Samples, AggregateOptions{Corpus: r.Corpus, Pod: r.Pod, Runs: r.Runs, PrimaryStorage: r.PrimaryStorage,
		CITarget: r.CITarget})
	n.Machine, n.Date, n.Command, n.Load, n.Wall, n.RoundsRun = r.Machine, r.Date, r.Command, r.Load, r.Wall, r.RoundsRun
	n.ServerNice = r.ServerNice
	n.Storages, n.Snapshots, n.Calibration = r.Storages, r.Snapshots, r.Calibration
	n.Noise, n.NoiseByConcurrency = summarise(r.Calibration), r.NoiseByConcurrency
	n.Samples = r.Samples
	n.attachFloor(r.Samples)
	return n, nil
}
