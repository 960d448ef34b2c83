package bench

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// synth makes samples whose true speedups are known: strategy s takes
// base*factor[s], times a per-round machine factor shared by every
// strategy (what interleaving pairs away) and a per-VM noise.
func synth(seed uint64, rounds, vms int, noise float64) []Sample {
	rng := rand.New(rand.NewPCG(seed, 1))
	factor := map[string]float64{Aquifer: 1, Firecracker: 3, REAP: 1.5, FaaSnap: 2, Warm: 0.5}
	order := []string{Aquifer, Firecracker, REAP, FaaSnap, Warm} // fixed: the draws must not follow map order
	var out []Sample
	for _, w := range []string{"a", "b", "c"} {
		base := map[string]float64{"a": 10, "b": 40, "c": 25}[w]
		for r := 0; r < rounds; r++ {
			machine := math.Exp(rng.NormFloat64() * 0.3) // rounds differ a lot
			for _, st := range order {
				f := factor[st]
				storage := ""
				if diskBased(st) {
					storage = StorageNVMe
				}
				for v := 0; v < vms; v++ {
					t := base * f * machine * math.Exp(rng.NormFloat64()*noise)
					out = append(out, Sample{Workload: w, Strategy: st, Storage: storage, Concurrency: vms, Round: r, VM: v,
						EndToEnd: time.Duration(t * 1e6)})
				}
			}
		}
	}
	return out
}

func TestBootstrapCovers(t *testing.T) {
	// Over many synthetic runs the 95% interval of vs_firecracker holds
	// the true value (3) most of the time, and the paired bootstrap is not
	// fooled by the large per-round machine factor.
	hit, n := 0, 40
	for seed := uint64(0); seed < uint64(n); seed++ {
		st := bootstrap(synth(seed, 8, 1, 0.1), StorageNVMe, 300, seed)
		ci := st.speedupCI["vs_firecracker"]
		if ci[0] <= st.speedup["vs_firecracker"] && st.speedup["vs_firecracker"] <= ci[1] && ci[0] <= 3 && 3 <= ci[1] {
			hit++
		}
		if w := ci[1]/ci[0] - 1; w > 0.5 {
			t.Fatalf("seed %d: interval %v is wide although the machine factor is shared by every strategy", seed, ci)
		}
	}
	if hit < n*8/10 {
		t.Fatalf("the 95%% interval held the true speedup in %d of %d runs", hit, n)
	}
	// More rounds, narrower intervals.
	few := bootstrap(synth(1, 4, 1, 0.2), StorageNVMe, 500, 1).speedupCI["vs_reap"]
	many := bootstrap(synth(1, 30, 1, 0.2), StorageNVMe, 500, 1).speedupCI["vs_reap"]
	if many[1]-many[0] >= few[1]-few[0] {
		t.Fatalf("30 rounds: %v, 4 rounds: %v", many, few)
	}
}

func TestAggregateCIsAndKeys(t *testing.T) {
	s := synth(7, 6, 2, 0.05)
	// The same strategy on a second storage: keyed with its storage.
	for _, x := range s {
		if x.Strategy == Firecracker {
			x.Storage = StorageDRAM
			x.EndToEnd /= 2
			s = append(s, x)
		}
	}
	r := AggregateWith(s, AggregateOptions{PrimaryStorage: StorageNVMe, Reps: 300})
	c := r.ByConcurrencyCI["2"]
	for _, k := range []string{"vs_firecracker", "vs_firecracker@dram", "vs_reap", "vs_best_baseline", "vs_warm"} {
		ci, ok := c[k]
		if !ok || !(ci[0] <= r.ByConcurrency["2"][k] && r.ByConcurrency["2"][k] <= ci[1]) {
			t.Fatalf("%s: point %v interval %v (%v)", k, r.ByConcurrency["2"][k], ci, ok)
		}
	}
	if got := r.GeomeanSpeedupCI["vs_firecracker"]; got != c["vs_firecracker"] {
		t.Fatalf("geomean_speedup_ci95 is not the lowest level's: %v", got)
	}
	if v := r.ByConcurrency["2"]["vs_firecracker@dram"] / r.ByConcurrency["2"]["vs_firecracker"]; math.Abs(v-0.5) > 0.01 {
		t.Fatalf("dram variant ratio %v, want 0.5", v)
	}
	for _, x := range r.Results {
		if x.Samples != 12 || x.P50CI[0] > x.P50 || x.P50CI[1] < x.P50 {
			t.Fatalf("%+v", x)
		}
	}
}

func TestOutliersShownNotDropped(t *testing.T) {
	var g []Sample
	for i := 0; i < 10; i++ {
		g = append(g, Sample{Workload: "a", Strategy: Aquifer, Round: i, EndToEnd: time.Duration(10+i%3) * time.Millisecond})
	}
	g = append(g, Sample{Workload: "a", Strategy: Aquifer, Round: 10, EndToEnd: 200 * time.Millisecond})
	out := outliers(g)
	if len(out) != 1 || out[0].Round != 10 || out[0].Factor < 10 {
		t.Fatalf("outliers %+v", out)
	}
	r := Aggregate(g, "x", "y", 0)
	if r.Results[0].Samples != 11 || r.Results[0].Outliers != 1 || len(r.Outliers) != 1 {
		t.Fatalf("the outlier must stay in the statistics and be listed: %+v", r.Results[0])
	}
}

func TestCalibrationAndAtomicWrite(t *testing.T) {
	cpu, page := calibrate()
	if cpu <= 0 || page <= 0 {
		t.Fatalf("calibration loops: %v %v", cpu, page)
	}
	n := summarise([]Calibration{{CPU: 10, FreshPage: 1}, {CPU: 20, FreshPage: 1}, {CPU: 30, FreshPage: 2}})
	if n.Runs != 3 || n.CPUP50 != 20 || n.CPUSpread != 2 {
		t.Fatalf("noise %+v", n)
	}
	p := filepath.Join(t.TempDir(), "r.json")
	if err := WriteFileAtomic(p, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "x" {
		t.Fatal("content")
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
}

func TestReportRoundTripAndPlots(t *testing.T) {
	smp := synth(3, 3, 1, 0.1)
	r := AggregateWith(smp, AggregateOptions{PrimaryStorage: StorageNVMe, Reps: 100})
	r.Samples = smp
	dir := t.TempDir()
	p := filepath.Join(dir, "r.json")
	if err := r.WriteJSON(p); err != nil {
		t.Fatal(err)
	}
	back, err := ReadReport(p)
	if err != nil {
		t.Fatal(err)
	}
	again, err := back.Reaggregate()
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(again.GeomeanSpeedup["vs_firecracker"]-r.GeomeanSpeedup["vs_firecracker"]) > 1e-12 {
		t.Fatalf("recomputed %v, first %v", again.GeomeanSpeedup, r.GeomeanSpeedup)
	}
	files, err := again.WritePlots(filepath.Join(dir, "plot.svg"))
	if err != nil || len(files) != 4 {
		t.Fatalf("plots %v: %v", files, err)
	}
	for _, f := range files {
		if st, err := os.Stat(f); err != nil || st.Size() < 1000 {
			t.Fatalf("%s: %v", f, err)
		}
	}
	if err := CheckStorages([]string{"ssd"}); err == nil {
		t.Fatal("unknown storage accepted")
	}
}
