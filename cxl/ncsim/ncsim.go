package ncsim

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"

	"github.com/aquifer-pool/aquifer/cxl"
)

// Config sets the simulated hardware's freedom. Probabilities are per
// scheduling step.
type Config struct {
	Size  int64  // device bytes (multiple of cxl.LineSize)
	Hosts int    // number of host views
	Seed  uint64 // drives scheduling and chaos

	Evict    float64 // probability of evicting one line of a random host
	Prefetch float64 // probability of prefetching a line near a host's recent access
	Complete float64 // probability of completing one pending flush/invalidate early
	// Burst is the largest number of consecutive steps a host may run
	// before the scheduler considers switching (1 = switch at every step).
	Burst int
}

// DefaultConfig returns aggressive settings that expose protocol bugs within
// a few hundred seeds.
func DefaultConfig(size int64, hosts int, seed uint64) Config {
	return Config{Size: size, Hosts: hosts, Seed: seed, Evict: 0.3, Prefetch: 0.4, Complete: 0.3, Burst: 40}
}

type line struct {
	data      [cxl.LineSize]byte
	dirty     bool
	pendFlush bool
	pendInval bool
}

// Stats counts simulated events.
type Stats struct {
	Steps, Evictions, Writebacks, Prefetches, EarlyCompletions, Crashes int
}

// Sim is one simulated pod.
type Sim struct {
	cfg   Config
	mem   []byte
	rng   *rand.Rand
	hosts []*Host
	stats Stats

	// scheduler state
	running bool
	back    chan int
}

// New creates a simulator with a zeroed device.
func New(cfg Config) *Sim {
	if cfg.Size <= 0 || cfg.Size%cxl.LineSize != 0 || cfg.Hosts <= 0 {
		panic(fmt.Sprintf("ncsim: bad config %+v", cfg))
	}
	if cfg.Burst < 1 {
		cfg.Burst = 1
	}
	s := &Sim{cfg: cfg, mem: make([]byte, cfg.Size), rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
	for i := 0; i < cfg.Hosts; i++ {
		s.hosts = append(s.hosts, &Host{s: s, id: i, cache: map[int64]*line{}, windows: []cxl.Window{{Off: 0, Len: cfg.Size}}})
	}
	return s
}

// Host returns host i's view.
func (s *Sim) Host(i int) *Host { return s.hosts[i] }

// Stats returns the event counters.
func (s *Sim) Stats() Stats { return s.stats }

// Device returns the device contents (what a host would read after
// invalidating everything). Tests use it for oracles only.
func (s *Sim) Device() []byte { return s.mem }

// Rand exposes the simulator's seeded generator so tests stay reproducible.
func (s *Sim) Rand() *rand.Rand { return s.rng }

type crashSignal struct{}

// Run runs fn[i] as a logical thread on host i until all return. Only one
// thread executes at a time; switches happen at region operations (and at
// Yield). A thread whose host crashed (see CrashAt) stops at its next
// operation.
func (s *Sim) Run(fns ...func(h *Host)) {
	if len(fns) > len(s.hosts) {
		panic("ncsim: more threads than hosts")
	}
	s.back = make(chan int)
	n := len(fns)
	done := make([]bool, n)
	for i, f := range fns {
		h := s.hosts[i]
		h.wake = make(chan struct{})
		go func() {
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(crashSignal); !ok {
						h.panicVal = r
					}
				}
				h.finished = true
				s.back <- i
			}()
			<-h.wake
			f(h)
		}()
	}
	s.running = true
	live := n
	cur := s.rng.IntN(n)
	burst := 0
	for live > 0 {
		s.hosts[cur].wake <- struct{}{}
		<-s.back
		if s.hosts[cur].finished && !done[cur] {
			done[cur] = true
			live--
			if p := s.hosts[cur].panicVal; p != nil {
				s.running = false
				panic(fmt.Sprintf("ncsim: host %d panicked: %v", cur, p))
			}
		}
		s.stats.Steps++
		s.chaos()
		if live == 0 {
			break
		}
		// Adversarial scheduling: keep running the same host for a random
		// burst (it races far ahead), or switch to a random other host (the
		// current one is preempted for an unbounded time).
		if burst > 0 && !done[cur] {
			burst--
			continue
		}
		burst = s.rng.IntN(s.cfg.Burst)
		for {
			cur = s.rng.IntN(n)
			if !done[cur] {
				break
			}
		}
	}
	s.running = false
}

func (s *Sim) chaos() {
	r := s.rng
	if r.Float64() < s.cfg.Evict {
		h := s.hosts[r.IntN(len(s.hosts))]
		h.evictRandom()
	}
	if r.Float64() < s.cfg.Prefetch {
		h := s.hosts[r.IntN(len(s.hosts))]
		h.prefetchNear()
	}
	if r.Float64() < s.cfg.Complete {
		h := s.hosts[r.IntN(len(s.hosts))]
		if len(h.pending) > 0 {
			i := r.IntN(len(h.pending))
			l := h.pending[i]
			h.pending[i] = h.pending[len(h.pending)-1]
			h.pending = h.pending[:len(h.pending)-1]
			h.complete(l)
			s.stats.EarlyCompletions++
		}
	}
}

// Host is one host's non-coherent view; it implements cxl.Region.
type Host struct {
	s       *Sim
	id      int
	cache   map[int64]*line
	order   []int64 // cached line indexes, deterministic order
	pending []int64 // lines with a pending flush or invalidate
	recent  [4]int64
	nrecent int
	windows []cxl.Window
	crashAt int // crash when this many ops have run (0 = never)
	ops     int

	wake     chan struct{}
	finished bool
	panicVal any
}

var _ cxl.Region = (*Host)(nil)

// ID returns the host index.
func (h *Host) ID() int { return h.id }

// SetWindows restricts which ranges this host may store to (a store outside
// panics, like a PROT_READ mapping faults).
func (h *Host) SetWindows(w []cxl.Window) { h.windows = w }

// CrashAt makes the host crash when it starts its n-th region operation
// from now (n >= 1): its dirty lines and pending write-backs are dropped and
// its thread stops.
func (h *Host) CrashAt(n int) { h.crashAt = h.ops + n }

// Yield lets the scheduler switch hosts without a memory operation (use it
// around control-plane calls so they interleave with region operations).
func (h *Host) Yield() { h.step() }

func (h *Host) step() {
	s := h.s
	if !s.running || h.wake == nil {
		return
	}
	s.back <- h.id
	<-h.wake
	h.ops++
	if h.crashAt > 0 && h.ops >= h.crashAt {
		h.crash()
		panic(crashSignal{})
	}
}

func (h *Host) crash() {
	h.s.stats.Crashes++
	for _, idx := range h.order {
		delete(h.cache, idx)
	}
	h.order = h.order[:0]
	h.pending = h.pending[:0]
	h.crashAt = 0
}

func (h *Host) get(idx int64) *line {
	if l, ok := h.cache[idx]; ok {
		return l
	}
	l := &line{}
	copy(l.data[:], h.s.mem[idx*cxl.LineSize:])
	h.cache[idx] = l
	h.order = append(h.order, idx)
	return l
}

func (h *Host) drop(idx int64) {
	l, ok := h.cache[idx]
	if !ok {
		return
	}
	if l.dirty {
		copy(h.s.mem[idx*cxl.LineSize:], l.data[:])
		h.s.stats.Writebacks++
	}
	delete(h.cache, idx)
	for i, v := range h.order {
		if v == idx {
			h.order = append(h.order[:i], h.order[i+1:]...)
			break
		}
	}
}

func (h *Host) complete(idx int64) {
	l, ok := h.cache[idx]
	if !ok {
		return
	}
	if l.pendFlush {
		l.pendFlush = false
		if l.dirty {
			copy(h.s.mem[idx*cxl.LineSize:], l.data[:])
			l.dirty = false
			h.s.stats.Writebacks++
		}
	}
	if l.pendInval {
		l.pendInval = false
		h.drop(idx)
	}
}

func (h *Host) evictRandom() {
	if len(h.order) == 0 {
		return
	}
	// Prefer dirty lines half of the time: early write-back is what breaks
	// missing fences.
	if h.s.rng.IntN(2) == 0 {
		var dirty []int64
		for _, idx := range h.order {
			if h.cache[idx].dirty {
				dirty = append(dirty, idx)
			}
		}
		if len(dirty) > 0 {
			h.drop(dirty[h.s.rng.IntN(len(dirty))])
			h.s.stats.Evictions++
			return
		}
	}
	h.drop(h.order[h.s.rng.IntN(len(h.order))])
	h.s.stats.Evictions++
}

func (h *Host) prefetchNear() {
	if h.nrecent == 0 {
		return
	}
	base := h.recent[h.s.rng.IntN(min(h.nrecent, len(h.recent)))]
	idx := base + int64(h.s.rng.IntN(64)) - 8
	if idx < 0 || idx >= h.s.cfg.Size/cxl.LineSize {
		return
	}
	if _, ok := h.cache[idx]; !ok {
		h.get(idx)
		h.s.stats.Prefetches++
	}
}

func (h *Host) touch(idx int64) {
	h.recent[h.nrecent%len(h.recent)] = idx
	h.nrecent++
}

func (h *Host) Size() int64  { return h.s.cfg.Size }
func (h *Host) Align() int64 { return cxl.LineSize }

func (h *Host) Writable(off, n int64) bool {
	for _, w := range h.windows {
		if off >= w.Off && off+n <= w.Off+w.Len {
			return true
		}
	}
	return false
}

func (h *Host) ReadAt(dst []byte, off int64) {
	h.step()
	cxl.CheckRange(h.s.cfg.Size, off, int64(len(dst)))
	for done := 0; done < len(dst); {
		p := off + int64(done)
		idx := p / cxl.LineSize
		l := h.get(idx)
		h.touch(idx)
		done += copy(dst[done:], l.data[p%cxl.LineSize:])
	}
}

func (h *Host) WriteAt(src []byte, off int64) {
	h.step()
	h.mustWrite(off, int64(len(src)))
	for done := 0; done < len(src); {
		p := off + int64(done)
		idx := p / cxl.LineSize
		l := h.get(idx)
		h.touch(idx)
		done += copy(l.data[p%cxl.LineSize:], src[done:])
		l.dirty = true
	}
}

func (h *Host) Load64(off int64) uint64 {
	var b [8]byte
	if off%8 != 0 {
		panic(fmt.Sprintf("ncsim: unaligned 8-byte load at %d", off))
	}
	h.ReadAt(b[:], off)
	return binary.LittleEndian.Uint64(b[:])
}

func (h *Host) Store64(off int64, v uint64) {
	var b [8]byte
	if off%8 != 0 {
		panic(fmt.Sprintf("ncsim: unaligned 8-byte store at %d", off))
	}
	binary.LittleEndian.PutUint64(b[:], v)
	h.WriteAt(b[:], off)
}

func (h *Host) Flush(off, n int64) {
	h.step()
	cxl.CheckRange(h.s.cfg.Size, off, n)
	start, lines := cxl.LineSpan(off, n)
	for i := int64(0); i < lines; i++ {
		idx := start/cxl.LineSize + i
		if l, ok := h.cache[idx]; ok {
			if !l.pendFlush && !l.pendInval {
				h.pending = append(h.pending, idx)
			}
			l.pendFlush = true
		}
	}
}

func (h *Host) Invalidate(off, n int64) {
	h.step()
	cxl.CheckRange(h.s.cfg.Size, off, n)
	start, lines := cxl.LineSpan(off, n)
	for i := int64(0); i < lines; i++ {
		idx := start/cxl.LineSize + i
		if l, ok := h.cache[idx]; ok {
			if !l.pendFlush && !l.pendInval {
				h.pending = append(h.pending, idx)
			}
			l.pendInval = true
		}
	}
}

func (h *Host) fence() {
	h.step()
	for _, idx := range h.pending {
		h.complete(idx)
	}
	h.pending = h.pending[:0]
}

func (h *Host) Fence()       { h.fence() }
func (h *Host) FullFence()   { h.fence() }
func (h *Host) Close() error { return nil }

func (h *Host) mustWrite(off, n int64) {
	cxl.CheckRange(h.s.cfg.Size, off, n)
	if !h.Writable(off, n) {
		panic(fmt.Sprintf("ncsim: host %d stores to [%d, +%d) outside its writable windows", h.id, off, n))
	}
}
