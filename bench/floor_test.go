package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

// TestCopyFloor runs the floor measurement on a real userfaultfd: both
// throughputs are measured (positive) and the copied bytes checked inside.
func TestCopyFloor(t *testing.T) {
	f, err := measureCopyFloor()
	if err != nil {
		t.Skipf("no userfaultfd here: %v", err)
	}
	if f.Batched <= 0 || f.PerPage <= 0 {
		t.Fatalf("floor %+v: a throughput is not positive", f)
	}
	t.Logf("UFFDIO_COPY floor: batched %.2f GB/s, per page %.2f GB/s", f.Batched/1e9, f.PerPage/1e9)
}

func BenchmarkCopyFloor(b *testing.B) {
	for b.Loop() {
		f, err := measureCopyFloor()
		if err != nil {
			b.Skip(err)
		}
		b.ReportMetric(f.Batched/1e9, "batched-GB/s")
		b.ReportMetric(f.PerPage/1e9, "perpage-GB/s")
	}
}

// TestFloorInReport: the report carries the run's floor (p50 of the
// calibration measurements) and the aquifer pre-install as a fraction of
// it, per result and for the run, in the JSON and the text.
func TestFloorInReport(t *testing.T) {
	var g []Sample
	for i := 0; i < 3; i++ {
		// 4 MiB in 2, 4, 8 ms: 2.1, 1.05, 0.52 GB/s; p50 1.05 GB/s.
		d := time.Duration(2<<i) * time.Millisecond
		g = append(g, Sample{Strategy: Aquifer, Workload: "w", Concurrency: 1, Round: i, EndToEnd: 10 * time.Millisecond,
			Breakdown: &Breakdown{Pager: &PagerCounts{Preinstall: d, PreinstallBytes: 4 << 20}}})
	}
	r := Aggregate(g, "x", "y", 0)
	r.AttachRun(&RunResult{Samples: g, Calibration: []Calibration{{Concurrency: 1, CopyFloor: 2e9, CopyPerPage: 1e9},
		{Concurrency: 1, CopyFloor: 3e9, CopyPerPage: 1e9}, {Concurrency: 1, CopyFloor: 4e9, CopyPerPage: 1e9}}})
	want := float64(4<<20) / 4e-3
	if r.CopyFloor != 3e9 || math.Abs(r.PreinstallRate-want) > 1 || math.Abs(r.PreinstallOfFloor-want/3e9) > 1e-9 {
		t.Fatalf("floor %v, pre-install %v (%v of the floor), want 3e9, %v", r.CopyFloor, r.PreinstallRate, r.PreinstallOfFloor, want)
	}
	if x := r.Results[0]; math.Abs(x.PreinstallOfFloor-want/3e9) > 1e-9 {
		t.Fatalf("result's fraction %v", x.PreinstallOfFloor)
	}
	var buf bytes.Buffer
	r.WriteTable(&buf)
	if !strings.Contains(buf.String(), "UFFDIO_COPY floor") || !strings.Contains(buf.String(), "35% of the floor") {
		t.Fatalf("the text report does not show the floor:\n%s", buf.String())
	}
	js, _ := json.Marshal(r)
	for _, k := range []string{`"uffdio_copy_floor_bytes_per_s":3000000000`, `"preinstall_fraction_of_floor":0.3495`} {
		if !strings.Contains(string(js), k) {
			t.Fatalf("JSON lacks %s", k)
		}
	}
}

// TestGapToWarm: the gap of aquifer to warm is the difference of their
// breakdowns' parts, with the ratio of p50s.
func TestGapToWarm(t *testing.T) {
	bd := func(wait, cold, crit time.Duration) *Breakdown {
		return &Breakdown{ResumeWait: wait, Critical: crit, Classes: map[string]ClassStall{ClassCold: {Stall: cold}}}
	}
	g := []Sample{
		{Strategy: Aquifer, Workload: "w", Concurrency: 1, EndToEnd: 30 * time.Millisecond, Breakdown: bd(5*time.Millisecond, 10*time.Millisecond, 25*time.Millisecond)},
		{Strategy: Warm, Workload: "w", Concurrency: 1, EndToEnd: 10 * time.Millisecond, Breakdown: bd(0, 0, 10*time.Millisecond)},
	}
	r := Aggregate(g, "x", "y", 0)
	if len(r.GapToWarm) != 1 {
		t.Fatalf("gaps %+v", r.GapToWarm)
	}
	x := r.GapToWarm[0]
	if x.Ratio != 3 || x.EndToEnd != 20*time.Millisecond || x.ResumeWait != 5*time.Millisecond || x.Cold != 10*time.Millisecond || x.Rest != 5*time.Millisecond {
		t.Fatalf("gap %+v", x)
	}
	var buf bytes.Buffer
	r.WriteTable(&buf)
	if !strings.Contains(buf.String(), "The gap to warm") {
		t.Fatal("no gap table in the text report")
	}
}
