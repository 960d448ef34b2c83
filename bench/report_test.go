package bench

import (
	"math"
	"testing"
	"time"
)

func TestAggregateSpeedups(t *testing.T) {
	var s []Sample
	add := func(w, st string, c int, ms ...int) {
		for i, m := range ms {
			s = append(s, Sample{Workload: w, Strategy: st, Concurrency: c, Round: i, EndToEnd: time.Duration(m) * time.Millisecond,
				Restore: time.Millisecond})
		}
	}
	add("a", Aquifer, 1, 10, 12, 11)
	add("a", Firecracker, 1, 40, 44, 42)
	add("a", REAP, 1, 20, 22, 21)
	add("a", FaaSnap, 1, 30, 30, 30)
	add("a", Warm, 1, 5, 5, 5)
	add("b", Aquifer, 1, 100, 100, 100)
	add("b", Firecracker, 1, 100, 100, 100)
	add("b", REAP, 1, 50, 50, 50)
	add("b", FaaSnap, 1, 300, 300, 300)
	add("b", Warm, 1, 50, 50, 50)
	add("a", Aquifer, 8, 20)
	add("a", Firecracker, 8, 80)
	r := Aggregate(s, "synthetic", "test", 3)
	near := func(got, want float64) bool { return math.Abs(got-want) < 1e-9 }
	// a: p50s aquifer 11, firecracker 42 → 42/11; b: 1.
	if got := r.GeomeanSpeedup["vs_firecracker"]; !near(got, math.Sqrt(42.0/11)) {
		t.Fatalf("vs_firecracker %v", got)
	}
	if got := r.GeomeanSpeedup["vs_reap"]; !near(got, math.Sqrt(21.0/11*0.5)) {
		t.Fatalf("vs_reap %v", got)
	}
	// The better baseline per geomean is the smaller speedup.
	if got := r.GeomeanSpeedup["vs_best_baseline"]; !near(got, math.Min(r.GeomeanSpeedup["vs_reap"], r.GeomeanSpeedup["vs_faasnap"])) {
		t.Fatalf("vs_best_baseline %v", got)
	}
	if got := r.GeomeanSpeedup["vs_warm"]; got > 1 {
		t.Fatalf("vs_warm %v > 1 with warm faster", got)
	}
	if got := r.ByConcurrency["8"]["vs_firecracker"]; !near(got, 4) {
		t.Fatalf("c8 vs_firecracker %v", got)
	}
	if pct([]int64{5, 1, 3, 2, 4}, 50) != 3 || pct([]int64{5, 1, 3, 2, 4}, 99) != 5 {
		t.Fatal("percentiles")
	}
}
