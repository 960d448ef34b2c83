package scaling

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/bench"
)

func testWorkload() Workload {
	w := Workload{Name: "t", Startup: 8 * time.Millisecond, Setup: 200 * time.Microsecond, HotPages: 1700, Preinstall: 7 * time.Millisecond,
		GuestCPU: 40 * time.Millisecond, VCPUs: 2, PagerCPU: 3 * time.Millisecond, ColdBytes: 2 << 20, ColdReads: 12,
		E2E: 40 * time.Millisecond, HotBytes: 1700 * 4096, ColdStored: 2 * (60 << 20)}
	fit(&w, CalibrationHost(2, 0))
	return w
}

func TestFitReproducesCalibration(t *testing.T) {
	w := testWorkload()
	got := SimulateHost(CalibrationHost(2, 0), w, 1).P50
	if d := math.Abs(float64(got)/float64(w.E2E) - 1); d > 0.01 {
		t.Fatalf("fitted model gives %v at c=1, measured %v", got, w.E2E)
	}
	if w.Waits <= 0 {
		t.Fatalf("no waits fitted (%v) although CPU alone is shorter than the measured time", w.Waits)
	}
	// A workload whose CPU alone exceeds the measurement gets no waits.
	x := w
	x.E2E = time.Millisecond
	fit(&x, CalibrationHost(2, 0))
	if x.Waits != 0 {
		t.Fatalf("waits %v for a CPU-bound workload", x.Waits)
	}
}

func TestHostMonotoneAndSaturates(t *testing.T) {
	w := testWorkload()
	h := ServerHost(32)
	prev := time.Duration(0)
	for _, c := range []int{1, 2, 4, 8, 16, 32, 64} {
		r := SimulateHost(h, w, c)
		if r.P50 < prev {
			t.Fatalf("p50 fell from %v to %v going to c=%d", prev, r.P50, c)
		}
		prev = r.P50
	}
	// More cores never hurt.
	for _, c := range []int{8, 64} {
		a, b := SimulateHost(ServerHost(32), w, c).P50, SimulateHost(ServerHost(64), w, c).P50
		if b > a {
			t.Fatalf("c=%d: 64 cores %v slower than 32 cores %v", c, b, a)
		}
	}
	// Far past the cores, the batch is CPU-bound: the last restore ends no
	// earlier than the batch's CPU over the cores, and the CPU is busy.
	h2 := CalibrationHost(2, 0)
	r := SimulateHost(h2, w, 32)
	// (the startups all end together first: they are not timed)
	cpu := float64(cpuPerRestore(w)) * 32 / 2
	if last := float64(quantile(r.Latencies, 1)); last < 0.95*cpu {
		t.Fatalf("32 restores on 2 cores: slowest %v, CPU bound %v", time.Duration(last), time.Duration(cpu))
	}
	if r.CPU < 0.9 || !strings.HasPrefix(r.Bottleneck, "cpu") {
		t.Fatalf("32 restores on 2 cores: CPU utilisation %.2f, bottleneck %q", r.CPU, r.Bottleneck)
	}
	// Below the cores' limit, restores barely interact.
	if a, b := SimulateHost(ServerHost(64), w, 1).P50, SimulateHost(ServerHost(64), w, 8).P50; float64(b) > 1.2*float64(a) {
		t.Fatalf("8 restores on 64 cores: %v vs %v alone", b, a)
	}
}

func TestSharedLinksAndSlots(t *testing.T) {
	w := testWorkload()
	h := ServerHost(64)
	h.CXLBandwidth = 200e6 // a starved link: each hot set takes ~35 ms alone
	r1, r16 := SimulateHost(h, w, 1), SimulateHost(h, w, 16)
	if r16.P50 < 4*r1.P50 {
		t.Fatalf("16 pre-installs over a 200 MB/s link: p50 %v, alone %v", r16.P50, r1.P50)
	}
	if !strings.HasPrefix(r16.Bottleneck, "cxl link") {
		t.Fatalf("bottleneck %q, want the CXL link", r16.Bottleneck)
	}
	h = ServerHost(64)
	h.PreinstallSlots = 1
	one := SimulateHost(h, w, 8)
	h.PreinstallSlots = 0
	free := SimulateHost(h, w, 8)
	if one.SlotWait <= 0 || free.SlotWait != 0 || one.P50 <= free.P50 {
		t.Fatalf("one slot: wait %v p50 %v; unbounded: wait %v p50 %v", one.SlotWait, one.P50, free.SlotWait, free.P50)
	}
}

func TestOpenLoopRate(t *testing.T) {
	w := testWorkload()
	h := ServerHost(16)
	capacity := float64(h.Cores) / (w.Startup + cpuPerRestore(w)).Seconds()
	low := SimulateHostRate(h, w, 0.2*capacity, 300, 1)
	high := SimulateHostRate(h, w, 1.5*capacity, 300, 1)
	if !low.Stable || high.Stable || high.P50 <= low.P50 {
		t.Fatalf("20%% load: p50 %v stable %v; 150%%: p50 %v stable %v", low.P50, low.Stable, high.P50, high.Stable)
	}
}

func TestCluster(t *testing.T) {
	w := testWorkload()
	c := DefaultCluster()
	c.Rate = 1000
	a, err := PlanCluster(c, w)
	if err != nil {
		t.Fatal(err)
	}
	c.Rate = 2000
	b, _ := PlanCluster(c, w)
	util := func(r ClusterResult, name string) float64 {
		for _, l := range r.Loads {
			if l.Resource == name {
				return l.Utilisation
			}
		}
		t.Fatalf("no %s in %+v", name, r.Loads)
		return 0
	}
	for _, n := range []string{"memory-node bandwidth", "control plane", "host CPU", "pod CXL bandwidth"} {
		if x, y := util(a, n), util(b, n); math.Abs(y-2*x) > 1e-9*y {
			t.Fatalf("%s: %g at 1000/s, %g at 2000/s (want linear)", n, x, y)
		}
	}
	// At its max rate the bottleneck sits exactly at the target.
	c.Rate = b.MaxRate
	m, _ := PlanCluster(c, w)
	if u := m.Loads[0].Utilisation; math.Abs(u-c.Target) > 1e-6 {
		t.Fatalf("at the max rate %g the busiest resource (%s) is at %g, target %g", c.Rate, m.Loads[0].Resource, u, c.Target)
	}
	// MinMemoryNodes is the least that fits.
	c = DefaultCluster()
	c.Rate = 200000
	c.Snapshots = 100
	n := MinMemoryNodes(c, w)
	c.MemoryNodes = n
	r, _ := PlanCluster(c, w)
	if util(r, "memory-node bandwidth") > c.Target || util(r, "memory-node IOPS") > c.Target {
		t.Fatalf("%d nodes: %+v", n, r.Loads)
	}
	c.MemoryNodes = n - 1
	r, _ = PlanCluster(c, w)
	if n > c.Replicas && util(r, "memory-node bandwidth") <= c.Target && util(r, "memory-node IOPS") <= c.Target && util(r, "memory-node capacity") <= c.Target {
		t.Fatalf("%d nodes already fit: MinMemoryNodes %d is not the least", n-1, n)
	}
	if _, err := PlanCluster(Cluster{Hosts: 10, Pods: 20}, w); err == nil {
		t.Fatal("more pods than hosts accepted")
	}
}

func TestCalibrateFromReport(t *testing.T) {
	pc := &bench.PagerCounts{Preinstall: 5 * time.Millisecond, PreinstallPages: 1000, ColdBytes: 1 << 20, ColdFaults: 10}
	rep := &bench.Report{Command: "aquifer bench", Results: []bench.Result{
		{Workload: "a", Strategy: bench.Aquifer, Variant: bench.Aquifer, Concurrency: 1, P50: int64(30 * time.Millisecond),
			P50CI: [2]int64{int64(28 * time.Millisecond), int64(33 * time.Millisecond)}, GuestCPUP50: 30 * time.Millisecond,
			ServerCPUP50: 8 * time.Millisecond, Breakdown: &bench.BreakdownP50{Restore: 200 * time.Microsecond, Pager: pc}},
		{Workload: "a", Strategy: bench.NoRestore, Variant: bench.NoRestore, Concurrency: 1, P50: int64(10 * time.Millisecond),
			VCPUBusyP50: 18 * time.Millisecond},
		{Workload: "a", Strategy: bench.Aquifer, Variant: bench.Aquifer, Concurrency: 8, P50: int64(150 * time.Millisecond),
			P50CI: [2]int64{int64(120 * time.Millisecond), int64(180 * time.Millisecond)}},
	}}
	cal, err := Calibrate(rep, bench.Aquifer, 2)
	if err != nil {
		t.Fatal(err)
	}
	w := cal.Workloads[0]
	if w.GuestCPU != 18*time.Millisecond || w.PagerCPU != 3*time.Millisecond || w.HotPages != 1000 || w.Startup != 30*time.Millisecond-18*time.Millisecond-200*time.Microsecond {
		t.Fatalf("calibrated %+v", w)
	}
	if f := cal.Fit["a"]; math.Abs(f-1) > 0.01 {
		t.Fatalf("fit %v", f)
	}
	checks := cal.Validate()
	if len(checks) != 2 || checks[1].Concurrency != 8 || checks[1].Model <= checks[0].Model {
		t.Fatalf("checks %+v", checks)
	}
	// A report without the floor is refused with a reason.
	rep.Results = rep.Results[:1]
	if _, err := Calibrate(rep, bench.Aquifer, 2); err == nil {
		t.Fatal("calibrated without the no-restore floor")
	}
}
