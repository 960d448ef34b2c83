package scaling

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/aquifer-pool/aquifer/bench"
)

// Calibration is the model's input: per-workload restores measured on one
// machine, and that machine.
type Calibration struct {
	Source  string `json:"source"`  // the report's command line and date
	Machine string `json:"machine"` // the calibration machine
	Cores   int    `json:"cores"`
	// Background is the other work's runnable threads while the report
	// ran, from its calibration loop: a single-threaded loop slowed s
	// times on N cores shares them with N*s - 1 other threads.
	Background float64    `json:"background_threads"`
	Strategy   string     `json:"strategy"`
	Workloads  []Workload `json:"workloads"`
	// Fit says, per workload, how well the fitted model reproduces the
	// measured concurrency-1 time (model / measured).
	Fit map[string]float64 `json:"fit"`
}

// Calibrate reads a bench report (with breakdowns and CPU times: aquifer
// and no-restore at concurrency 1 at least) for strategy (aquifer or
// aquifer-early) on a machine of cores cores.
func Calibrate(r *bench.Report, strategy string, cores int) (*Calibration, error) {
	if cores <= 0 {
		return nil, fmt.Errorf("the calibration machine's cores must be positive")
	}
	type key struct {
		w, v string
		c    int
	}
	res := map[key]bench.Result{}
	for _, x := range r.Results {
		res[key{x.Workload, x.Variant, x.Concurrency}] = x
	}
	cal := &Calibration{Source: fmt.Sprintf("%s (%s)", r.Command, r.Date), Machine: r.Machine, Cores: cores, Strategy: strategy,
		Fit: map[string]float64{}, Background: background(r, cores)}
	var names []string
	for k := range res {
		if k.v == strategy && k.c == 1 {
			names = append(names, k.w)
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("the report has no %s results at concurrency 1", strategy)
	}
	for _, name := range names {
		aq := res[key{name, strategy, 1}]
		floor, ok := res[key{name, bench.NoRestore, 1}]
		if !ok || aq.Breakdown == nil || aq.Breakdown.Pager == nil || floor.VCPUBusyP50 == 0 {
			return nil, fmt.Errorf("workload %s: the report lacks the breakdown, CPU times or the no-restore floor at concurrency 1 (run aquifer bench with strategies %s and %s)",
				name, strategy, bench.NoRestore)
		}
		b := aq.Breakdown
		// The replay's CPU: the vCPU threads' own CPU time where the report
		// has it (older reports: the floor's vCPU time, which counts the
		// think time the guest sleeps as CPU too).
		guestCPU, vcpus := floor.VCPUBusyP50, 2.0
		if aq.VCPUCPUP50 > 0 && aq.VCPUCPUMaxP50 > 0 {
			guestCPU = aq.VCPUCPUP50
			vcpus = math.Min(2, float64(aq.VCPUCPUP50)/float64(aq.VCPUCPUMaxP50))
		}
		w := Workload{Name: name, Setup: b.Restore, HotPages: b.Pager.PreinstallPages, Preinstall: b.Pager.Preinstall,
			GuestCPU: guestCPU, VCPUs: vcpus, ColdBytes: b.Pager.ColdBytes, ColdReads: b.Pager.ColdFaults,
			E2E: time.Duration(aq.P50), Measured: map[int]time.Duration{}, MeasuredCI: map[int][2]time.Duration{},
			HotBytes: b.Pager.PreinstallPages * 4096}
		// The daemon's CPU bounds the pre-install's: what it did not use
		// of the pre-install's time was waiting.
		if aq.ServerCPUP50 < w.Preinstall {
			w.PreinstallWait = w.Preinstall - aq.ServerCPUP50
			w.Preinstall = aq.ServerCPUP50
		}
		w.PagerCPU += aq.ServerCPUP50 - w.Preinstall
		if aq.GuestCPUP50 > w.GuestCPU+b.Restore {
			w.Startup = aq.GuestCPUP50 - w.GuestCPU - b.Restore
		}
		for _, s := range r.Snapshots {
			if s.Workload == name && s.Strategy == strategy {
				w.HotBytes, w.ColdStored = s.CXL, s.MemoryNodes
			}
		}
		for k, x := range res {
			if k.w == name && k.v == strategy {
				w.Measured[k.c] = time.Duration(x.P50)
				w.MeasuredCI[k.c] = [2]time.Duration{time.Duration(x.P50CI[0]), time.Duration(x.P50CI[1])}
			}
		}
		if strategy == bench.AquiferEarly {
			// The hot set streams in while the VM runs: its cost moves
			// into the replay.
			w.PagerCPU += w.Preinstall
			w.Preinstall, w.PreinstallWait, w.HotPages = 0, 0, 0
		}
		fit(&w, CalibrationHost(cores, 0))
		cal.Fit[name] = float64(SimulateHost(CalibrationHost(cores, 0), w, 1).P50) / float64(w.E2E)
		cal.Workloads = append(cal.Workloads, w)
	}
	return cal, nil
}

// fit sets w.Waits so that one restore alone on h takes w.E2E.
func fit(w *Workload, h Host) {
	w.Waits = 0
	if SimulateHost(h, *w, 1).P50 >= w.E2E {
		return // CPU alone already takes as long: no waits
	}
	lo, hi := time.Duration(0), w.E2E
	for i := 0; i < 40 && hi-lo > time.Microsecond; i++ {
		w.Waits = (lo + hi) / 2
		if SimulateHost(h, *w, 1).P50 < w.E2E {
			lo = w.Waits
		} else {
			hi = w.Waits
		}
	}
	w.Waits = (lo + hi) / 2
}

// Check is one validation point: the model's prediction on the
// calibration machine against a measured p50.
type Check struct {
	Workload    string        `json:"workload"`
	Concurrency int           `json:"concurrency"`
	Measured    time.Duration `json:"measured_p50_ns"`
	MeasuredCI  [2]time.Duration
	Model       time.Duration `json:"model_p50_ns"`
	// Error is model / measured - 1; Inside says whether the model falls
	// in the measured 95% interval.
	Error  float64 `json:"error"`
	Inside bool    `json:"inside_ci"`
}

// Validate predicts every measured concurrency level on the calibration
// machine (c = 1 is the fit itself).
func (cal *Calibration) Validate() []Check {
	var out []Check
	for _, w := range cal.Workloads {
		var cs []int
		for c := range w.Measured {
			cs = append(cs, c)
		}
		sort.Ints(cs)
		for _, c := range cs {
			m := SimulateHost(CalibrationHost(cal.Cores, 0), w, c).P50
			ci := w.MeasuredCI[c]
			out = append(out, Check{Workload: w.Name, Concurrency: c, Measured: w.Measured[c], MeasuredCI: ci, Model: m,
				Error: float64(m)/float64(w.Measured[c]) - 1, Inside: float64(m) >= 0.999*float64(ci[0]) && float64(m) <= 1.001*float64(ci[1])})
		}
	}
	return out
}

// Mean is the mean workload (every field averaged), for sizing a mix.
func (cal *Calibration) Mean() Workload {
	n := float64(len(cal.Workloads))
	var m Workload
	m.Name = "mean of " + strconv.Itoa(len(cal.Workloads)) + " workloads"
	var f [14]float64
	for _, w := range cal.Workloads {
		for i, v := range []float64{float64(w.Startup), float64(w.Setup), float64(w.HotPages), float64(w.Preinstall), float64(w.GuestCPU),
			float64(w.PagerCPU), float64(w.ColdBytes), float64(w.ColdReads), float64(w.Waits), float64(w.E2E), float64(w.HotBytes), float64(w.ColdStored),
			float64(w.PreinstallWait), w.VCPUs} {
			f[i] += v / n
		}
	}
	m.Startup, m.Setup, m.HotPages, m.Preinstall = dur(f[0]), dur(f[1]), uint64(f[2]), dur(f[3])
	m.GuestCPU, m.PagerCPU, m.ColdBytes, m.ColdReads = dur(f[4]), dur(f[5]), uint64(f[6]), uint64(f[7])
	m.Waits, m.E2E, m.HotBytes, m.ColdStored = dur(f[8]), dur(f[9]), uint64(f[10]), uint64(f[11])
	m.PreinstallWait, m.VCPUs = dur(f[12]), f[13]
	return m
}

// Find returns the named workload ("mean" for Mean).
func (cal *Calibration) Find(name string) (Workload, error) {
	if name == "" || name == "mean" {
		return cal.Mean(), nil
	}
	for _, w := range cal.Workloads {
		if w.Name == name {
			return w, nil
		}
	}
	return Workload{}, fmt.Errorf("no workload %q in the calibration", name)
}

// background estimates other work's runnable threads from the report's
// calibration loops (run between batches, when the benchmark is idle):
// the mean CPU loop against the fastest one.
func background(r *bench.Report, cores int) float64 {
	if len(r.Calibration) == 0 {
		return 0
	}
	fastest, sum := time.Duration(math.MaxInt64), 0.0
	for _, c := range r.Calibration {
		fastest = min(fastest, c.CPU)
		sum += float64(c.CPU)
	}
	if fastest <= 0 {
		return 0
	}
	slow := sum / float64(len(r.Calibration)) / float64(fastest)
	return math.Max(0, float64(cores)*slow-1)
}
