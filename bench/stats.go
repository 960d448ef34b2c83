package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
)

// Statistics over samples, generic over how the samples were produced
// (this package's emulator runs or real guests): everything below reads
// only Workload, Label(), Concurrency, Round and EndToEnd.

// Label names a sample's variant: the strategy, with "@storage" for the
// disk-based strategies.
func (s Sample) Label() string {
	if s.Storage == "" {
		return s.Strategy
	}
	return s.Strategy + "@" + s.Storage
}

// splitLabel undoes Label.
func splitLabel(l string) (strategy, storage string) {
	s, st, _ := strings.Cut(l, "@")
	return s, st
}

// speedupKey is the JSON key of aquifer's speedup over variant l: "vs_" +
// the strategy for the primary storage (or none), else "vs_strategy@storage".
func speedupKey(l, primary string) string {
	s, st := splitLabel(l)
	if st == "" || st == primary {
		return "vs_" + s
	}
	return "vs_" + l
}

// CI is a 95% interval.
type CI [2]float64

// Within reports whether the interval lies within ±frac of x.
func (c CI) Within(x, frac float64) bool {
	return x > 0 && c[0] >= x*(1-frac) && c[1] <= x*(1+frac)
}

// levelStats are the estimates of one concurrency level.
type levelStats struct {
	speedup   Speedups              // point estimates (geomeans of p50 ratios)
	speedupCI map[string]CI         // 95% bootstrap intervals
	ratio     map[[2]string]float64 // (workload, label) -> p50 / p50(aquifer)
	ratioCI   map[[2]string]CI
	p50CI     map[[2]string]CI // (workload, label) -> interval of the p50, ns
}

// bootstrap estimates one concurrency level's speedups and their 95%
// intervals by a paired two-stage bootstrap: each replicate draws the rounds
// of a workload with replacement — the same rounds for every variant, so
// the pairing that interleaving buys is kept — then the VMs within each
// drawn round, and recomputes every p50, ratio and geomean.
func bootstrap(samples []Sample, primary string, reps int, seed uint64) *levelStats {
	type cellKey struct {
		w, l string
		r    int
	}
	cells := map[cellKey][]float64{}
	rounds := map[string][]int{}
	labels := map[string][]string{}
	all := map[[2]string][]float64{}
	for _, s := range samples {
		k := cellKey{s.Workload, s.Label(), s.Round}
		if _, ok := cells[k]; !ok {
			if !slices.Contains(rounds[s.Workload], s.Round) {
				rounds[s.Workload] = append(rounds[s.Workload], s.Round)
			}
			if !slices.Contains(labels[s.Workload], s.Label()) {
				labels[s.Workload] = append(labels[s.Workload], s.Label())
			}
		}
		cells[k] = append(cells[k], float64(s.EndToEnd))
		all[[2]string{s.Workload, s.Label()}] = append(all[[2]string{s.Workload, s.Label()}], float64(s.EndToEnd))
	}
	var workloads []string
	for w := range rounds {
		workloads = append(workloads, w)
		sort.Ints(rounds[w])
		sort.Strings(labels[w])
	}
	sort.Strings(workloads)
	st := &levelStats{speedupCI: map[string]CI{}, ratio: map[[2]string]float64{}, ratioCI: map[[2]string]CI{},
		p50CI: map[[2]string]CI{}}
	// Point estimates.
	med := map[[2]string]float64{}
	for k, v := range all {
		med[k] = median(v)
	}
	geo := func(med map[[2]string]float64) Speedups {
		logs := map[string][]float64{}
		for _, w := range workloads {
			a := med[[2]string{w, Aquifer}]
			if a <= 0 {
				continue
			}
			for _, l := range labels[w] {
				if l == Aquifer {
					continue
				}
				if v := med[[2]string{w, l}]; v > 0 {
					k := speedupKey(l, primary)
					logs[k] = append(logs[k], math.Log(v/a))
				}
			}
		}
		sp := Speedups{}
		for k, l := range logs {
			sum := 0.0
			for _, x := range l {
				sum += x
			}
			sp[k] = math.Exp(sum / float64(len(l)))
		}
		// The better of REAP and FaaSnap, per storage.
		for k, v := range sp {
			rest, ok := strings.CutPrefix(k, "vs_"+REAP)
			if !ok {
				continue
			}
			if f, ok := sp["vs_"+FaaSnap+rest]; ok {
				sp["vs_best_baseline"+rest] = min(v, f)
			}
		}
		return sp
	}
	st.speedup = geo(med)
	for k, v := range med {
		if a := med[[2]string{k[0], Aquifer}]; a > 0 {
			st.ratio[k] = v / a
		}
	}
	if reps <= 0 {
		return st
	}
	// Replicates.
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	spReps := map[string][]float64{}
	ratioReps := map[[2]string][]float64{}
	p50Reps := map[[2]string][]float64{}
	var buf []float64
	rmed := map[[2]string]float64{}
	for b := 0; b < reps; b++ {
		clear(rmed)
		for _, w := range workloads {
			rs := rounds[w]
			drawn := make([]int, len(rs))
			for i := range drawn {
				drawn[i] = rs[rng.IntN(len(rs))]
			}
			for _, l := range labels[w] {
				buf = buf[:0]
				for _, r := range drawn {
					c := cells[cellKey{w, l, r}]
					for range c {
						buf = append(buf, c[rng.IntN(len(c))])
					}
				}
				if len(buf) > 0 {
					rmed[[2]string{w, l}] = median(buf)
				}
			}
		}
		for k, v := range geo(rmed) {
			spReps[k] = append(spReps[k], v)
		}
		for k, v := range rmed {
			p50Reps[k] = append(p50Reps[k], v)
			if a := rmed[[2]string{k[0], Aquifer}]; a > 0 {
				ratioReps[k] = append(ratioReps[k], v/a)
			}
		}
	}
	for k, v := range spReps {
		st.speedupCI[k] = percentileCI(v)
	}
	for k, v := range ratioReps {
		st.ratioCI[k] = percentileCI(v)
	}
	for k, v := range p50Reps {
		st.p50CI[k] = percentileCI(v)
	}
	return st
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// quantile interpolates the p-quantile of sorted s.
func quantile(s []float64, p float64) float64 {
	i := p * float64(len(s)-1)
	lo := int(math.Floor(i))
	hi := min(lo+1, len(s)-1)
	return s[lo] + (s[hi]-s[lo])*(i-float64(lo))
}

func percentileCI(v []float64) CI {
	s := slices.Clone(v)
	slices.Sort(s)
	return CI{quantile(s, 0.025), quantile(s, 0.975)}
}

// Outlier is a sample outside its group's Tukey fences (1.5 IQR of the
// log end-to-end time). Outliers are shown, never dropped.
type Outlier struct {
	Workload    string  `json:"workload"`
	Label       string  `json:"strategy"`
	Concurrency int     `json:"concurrency"`
	Round       int     `json:"round"`
	VM          int     `json:"vm"`
	EndToEnd    int64   `json:"end_to_end_ns"`
	GroupP50    int64   `json:"group_p50_ns"`
	Factor      float64 `json:"factor"` // EndToEnd / GroupP50
}

func outliers(g []Sample) []Outlier {
	if len(g) < 4 {
		return nil
	}
	l := make([]float64, len(g))
	for i, s := range g {
		l[i] = math.Log(float64(max(s.EndToEnd, 1)))
	}
	s := slices.Clone(l)
	slices.Sort(s)
	q1, q3 := quantile(s, 0.25), quantile(s, 0.75)
	iqr := q3 - q1
	m := math.Exp(median(l))
	var out []Outlier
	for i, x := range l {
		if x < q1-1.5*iqr || x > q3+1.5*iqr {
			smp := g[i]
			out = append(out, Outlier{Workload: smp.Workload, Label: smp.Label(), Concurrency: smp.Concurrency, Round: smp.Round,
				VM: smp.VM, EndToEnd: int64(smp.EndToEnd), GroupP50: int64(m), Factor: float64(smp.EndToEnd) / m})
		}
	}
	return out
}
