package scaling

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

type resource int

const (
	resCPU resource = iota
	resCXL
	resNIC
	resDelay
)

type comp struct {
	res  resource
	left float64 // ns of CPU, bytes, or ns of delay
	par  float64 // CPU threads
}

type phase struct {
	comps []comp
	slot  bool // needs a pre-install slot
	timed bool // the restore's clock runs
}

type job struct {
	phases  []phase
	at      int
	arrive  float64 // ns
	start   float64 // clock start (first timed phase), ns
	started bool
	holds   bool // holds a pre-install slot
	waiting bool // queued for a slot
	done    float64
}

// phases builds a restore's phase list.
func (w Workload) phases() []phase {
	ph := []phase{
		{comps: []comp{{res: resCPU, left: float64(w.Startup), par: 1}}},
		{comps: []comp{{res: resCPU, left: float64(w.Setup), par: 1}}, timed: true},
		{comps: []comp{{res: resCPU, left: float64(w.Preinstall), par: 1}, {res: resCXL, left: float64(w.HotPages * 4096)},
			{res: resDelay, left: float64(w.PreinstallWait)}}, slot: true, timed: true},
	}
	for k := 0; k < segments; k++ {
		ph = append(ph,
			phase{comps: []comp{{res: resCPU, left: float64(w.GuestCPU) / segments, par: w.VCPUs},
				{res: resCPU, left: float64(w.PagerCPU) / segments, par: 1}}, timed: true},
			phase{comps: []comp{{res: resDelay, left: float64(w.Waits) / segments},
				{res: resNIC, left: float64(w.ColdBytes) / segments}}, timed: true})
	}
	return ph
}

// HostResult is a simulated host's outcome.
type HostResult struct {
	Concurrency int             `json:"concurrency,omitempty"`
	Rate        float64         `json:"rate_per_s,omitempty"` // open-loop arrivals
	P50         time.Duration   `json:"p50_ns"`
	P99         time.Duration   `json:"p99_ns"`
	Latencies   []time.Duration `json:"-"`
	// Utilisation of each resource over the simulated time.
	CPU, CXL, NIC float64
	// SlotWait is the mean time a restore queued for a pre-install slot.
	SlotWait time.Duration `json:"slot_wait_ns"`
	// Bottleneck names the most utilised resource.
	Bottleneck string `json:"bottleneck"`
	// Stable is false when an open-loop rate exceeds the host's capacity.
	Stable bool `json:"stable"`
}

// SimulateHost runs c restores of w that start together (a batch, as
// `aquifer bench` runs them) on h.
func SimulateHost(h Host, w Workload, c int) HostResult {
	jobs := make([]*job, c)
	for i := range jobs {
		jobs[i] = &job{phases: w.phases()}
	}
	r := simulate(h, jobs, nil)
	r.Concurrency = c
	return r
}

// SimulateHostRate runs Poisson arrivals of w at rate per second on h for
// n restores (the first tenth is warm-up) and reports their latencies.
func SimulateHostRate(h Host, w Workload, rate float64, n int, seed uint64) HostResult {
	rng := rand.New(rand.NewPCG(seed, 99))
	arrivals := make([]float64, n)
	t := 0.0
	for i := range arrivals {
		t += rng.ExpFloat64() / rate * 1e9
		arrivals[i] = t
	}
	jobs := make([]*job, n)
	for i := range jobs {
		jobs[i] = &job{phases: w.phases(), arrive: arrivals[i]}
	}
	r := simulate(h, jobs, arrivals)
	r.Rate = rate
	warm := n / 10
	lat := r.Latencies[warm:]
	r.Latencies = lat
	r.P50, r.P99 = quantile(lat, 0.5), quantile(lat, 0.99)
	// Stable while every resource's offered load stays below 1.
	rho := rate * (w.Startup + cpuPerRestore(w)).Seconds() / float64(h.Cores)
	if h.CXLBandwidth > 0 {
		rho = math.Max(rho, rate*float64(w.HotBytes)/h.CXLBandwidth)
	}
	if h.NICBandwidth > 0 {
		rho = math.Max(rho, rate*float64(w.ColdBytes)/h.NICBandwidth)
	}
	r.Stable = rho < 1
	return r
}

func simulate(h Host, jobs []*job, arrivals []float64) HostResult {
	now := 0.0
	active := []*job{}
	next := 0 // next arrival
	if arrivals == nil {
		active = append(active, jobs...)
		next = len(jobs)
	}
	slotsFree := h.PreinstallSlots
	var queue []*job
	var busyCPU, busyCXL, busyNIC, slotWait float64
	var slotWaits int
	startPhase := func(j *job) {
		for j.at < len(j.phases) {
			ph := &j.phases[j.at]
			if ph.timed && !j.started {
				j.started, j.start = true, now
			}
			if ph.slot && h.PreinstallSlots > 0 && !j.holds {
				if slotsFree == 0 {
					if !j.waiting {
						j.waiting = true
						j.done = now // reuse: queue entry time
						queue = append(queue, j)
					}
					return
				}
				slotsFree--
				j.holds = true
			}
			return
		}
	}
	for _, j := range active {
		startPhase(j)
	}
	finished := 0
	for finished < len(jobs) {
		if len(active) == 0 && next < len(jobs) {
			now = arrivals[next]
		}
		for next < len(jobs) && arrivals[next] <= now {
			active = append(active, jobs[next])
			startPhase(jobs[next])
			next++
		}
		// Rates.
		demand, ncxl, nnic := 0.0, 0, 0
		for _, j := range active {
			if j.waiting || j.at >= len(j.phases) {
				continue
			}
			for _, c := range j.phases[j.at].comps {
				if c.left <= 0 {
					continue
				}
				switch c.res {
				case resCPU:
					demand += c.par
				case resCXL:
					ncxl++
				case resNIC:
					nnic++
				}
			}
		}
		// Processor sharing among our threads and the background's.
		cpuShare := 1.0
		if all := demand + h.Background; all > float64(h.Cores) {
			cpuShare = float64(h.Cores) / all
		}
		rate := func(c comp) float64 {
			switch c.res {
			case resCPU:
				return c.par * cpuShare
			case resCXL:
				if h.CXLBandwidth <= 0 {
					return math.Inf(1)
				}
				return h.CXLBandwidth / 1e9 / float64(ncxl)
			case resNIC:
				if h.NICBandwidth <= 0 {
					return math.Inf(1)
				}
				return h.NICBandwidth / 1e9 / float64(nnic)
			}
			// A wait is fault round trips: each needs the faulting and the
			// serving thread scheduled, so it stretches with the CPU's
			// contention (without using CPU itself).
			return cpuShare
		}
		dt := math.Inf(1)
		for _, j := range active {
			if j.waiting || j.at >= len(j.phases) {
				continue
			}
			for _, c := range j.phases[j.at].comps {
				if c.left > 0 {
					dt = min(dt, c.left/rate(c))
				}
			}
		}
		if next < len(jobs) {
			dt = min(dt, arrivals[next]-now)
		}
		if math.IsInf(dt, 1) {
			dt = 0
		}
		// Advance.
		busyCPU += demand * cpuShare * dt
		if ncxl > 0 {
			busyCXL += dt
		}
		if nnic > 0 {
			busyNIC += dt
		}
		now += dt
		var still []*job
		released := 0
		for _, j := range active {
			if !j.waiting && j.at < len(j.phases) {
				ph := &j.phases[j.at]
				left := false
				for i := range ph.comps {
					c := &ph.comps[i]
					if c.left > 0 {
						if math.IsInf(rate(*c), 1) {
							c.left = 0
						} else if c.left -= rate(*c) * dt; c.left < 1e-6 {
							c.left = 0
						}
					}
					if c.left > 0 {
						left = true
					}
				}
				if !left {
					if ph.slot && j.holds {
						j.holds = false
						released++
					}
					j.at++
					startPhase(j)
				}
			}
			if j.at >= len(j.phases) {
				j.done = now
				finished++
				continue
			}
			still = append(still, j)
		}
		active = still
		// Hand freed slots to queued restores only now: they did not take
		// part in this step's rates.
		slotsFree += released
		for slotsFree > 0 && len(queue) > 0 {
			q := queue[0]
			queue = queue[1:]
			q.waiting = false
			slotWait += now - q.done
			slotWaits++
			slotsFree--
			q.holds = true
		}
	}
	res := HostResult{Stable: true}
	for _, j := range jobs {
		res.Latencies = append(res.Latencies, time.Duration(j.done-j.start))
	}
	res.P50, res.P99 = quantile(res.Latencies, 0.5), quantile(res.Latencies, 0.99)
	if now > 0 {
		res.CPU = busyCPU / (now * float64(h.Cores))
		res.CXL, res.NIC = busyCXL/now, busyNIC/now
	}
	if slotWaits > 0 {
		res.SlotWait = time.Duration(slotWait / float64(slotWaits))
	}
	// The bottleneck is the busiest resource if it is busy (> 70%), and
	// the pre-install slots if restores queue for them.
	res.Bottleneck = ""
	switch m := math.Max(res.CPU, math.Max(res.CXL, res.NIC)); {
	case m < 0.7:
	case m == res.CPU:
		res.Bottleneck = "cpu"
	case m == res.CXL:
		res.Bottleneck = "cxl link"
	default:
		res.Bottleneck = "nic"
	}
	if res.SlotWait > res.P50/4 {
		res.Bottleneck = strings.TrimPrefix(res.Bottleneck+" + pre-install slots", " + ")
	}
	if res.Bottleneck == "" {
		res.Bottleneck = "none"
	}
	return res
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
