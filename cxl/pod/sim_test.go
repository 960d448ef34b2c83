package pod_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/aquifer-pool/aquifer/cxl/ncsim"
	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/cxl/pod/podtest"
)

// Payload format used by the tests: word 0 = key id, word 1 = version (or
// publish serial), word 2 = length, words 3.. = mix(key, version, i). A copy
// is torn if it is not self-consistent, stale if it is self-consistent but
// older than the oracle allows.
func payload(key, version uint64, n int) []byte {
	b := make([]byte, n)
	le := binary.LittleEndian
	le.PutUint64(b[0:], key)
	le.PutUint64(b[8:], version)
	le.PutUint64(b[16:], uint64(n))
	for i := 24; i+8 <= n; i += 8 {
		le.PutUint64(b[i:], mix(key, version, uint64(i)))
	}
	return b
}

func mix(a, b, c uint64) uint64 {
	x := a*0x9e3779b97f4a7c15 ^ b*0xbf58476d1ce4e5b9 ^ c*0x94d049bb133111eb
	x ^= x >> 31
	return x*0xd6e8feb86659fd93 | 1
}

// check returns key, version and whether b is a self-consistent payload.
func check(b []byte) (key, version uint64, ok bool) {
	if len(b) < 24 {
		return 0, 0, false
	}
	le := binary.LittleEndian
	key, version = le.Uint64(b[0:]), le.Uint64(b[8:])
	if le.Uint64(b[16:]) != uint64(len(b)) || key == 0 {
		return key, version, false
	}
	for i := 24; i+8 <= len(b); i += 8 {
		if le.Uint64(b[i:]) != mix(key, version, uint64(i)) {
			return key, version, false
		}
	}
	return key, version, true
}

type simResult struct {
	reads, bad, fallbacks, retries, crashes int
}

// simRun runs one seed: host 0 owns two chunks and publishes new versions of
// two keys (extents are reused quickly: chunks of 4 pages), hosts 1 and 2
// read concurrently, and in some seeds host 0 crashes mid-way and host 3
// takes the chunks over (recovery) and continues publishing.
//
// scan selects descriptor-scan readers (no catalog): they accept any
// Published descriptor and check its payload serial against the
// descriptor's, which is what the writer-fence step protects.
func simRun(t *testing.T, seed uint64, b pod.Bugs, scan bool) simResult {
	return simRunMode(t, seed, b, scan, simMode{})
}

// simMode selects the zombie variant: host 0 is stopped (not crashed) in the
// middle of its publishes, its lease expires, host 3 takes its chunks over
// and publishes, and host 0 then resumes — its late stores land in chunks it
// no longer owns. With selfFence host 0 knows its lease may have lapsed
// (pod.Options.Valid) and stops at its next step; without it only the
// control plane fences it (its catalog writes fail).
type simMode struct {
	zombie, selfFence bool
}

func simRunMode(t *testing.T, seed uint64, b pod.Bugs, scan bool, mode simMode) simResult {
	const size = 64 << 10
	s := ncsim.New(ncsim.DefaultConfig(size, 4, seed))
	g, err := pod.Format(s.Host(0), pod.FormatOptions{ChunkSize: 16 << 10, HostSlots: 4})
	if err != nil {
		t.Fatal(err)
	}
	// Every simulated host may store only inside its windows (a store
	// elsewhere panics, failing the test): readers only to their slot.
	for h := 0; h < 4; h++ {
		s.Host(h).SetWindows(g.Windows(h, h == 0 || h == 3))
	}
	coord := podtest.NewMemCoordinator()
	ctx := context.Background()
	rng := s.Rand()
	var (
		res      simResult
		latest   [3]uint64 // oracle: newest version of key k whose Publish returned
		version  [3]uint64 // next version to publish
		wdone    bool
		crashed  = rng.IntN(3) == 0 && !mode.zombie
		versions = 10
		// zombie mode
		pauseAt         = rng.IntN(2 * versions)
		paused, expired bool
		takenOver       bool
		published       int
	)
	if crashed {
		s.Host(0).CrashAt(50 + rng.IntN(600))
	}
	publisher := func(h *ncsim.Host, chunks []int) func() {
		return func() {
			opts := pod.Options{Owner: true, Yield: h.Yield}
			if h.ID() == 0 && mode.selfFence {
				opts.Valid = func() bool { return !expired }
			}
			p, err := pod.Open(ctx, h, h.ID(), coord, opts)
			if err != nil {
				panic(err)
			}
			p.SetBugs(b)
			for _, c := range chunks {
				if err := p.Acquire(ctx, c); err != nil {
					panic(err)
				}
			}
			for v := 0; v < versions; v++ {
				for k := uint64(1); k <= 2; k++ {
					version[k]++
					ver := version[k]
					if scan {
						ver = p.Serial() + 1
					}
					n := 200 + rng.IntN(1800)
					if mode.zombie && h.ID() == 0 && published == pauseAt {
						paused = true // SIGSTOP: nothing runs until host 3 took over
						for !takenOver {
							h.Yield()
						}
					}
					if h.ID() == 0 {
						published++
					}
					ref, err := p.Publish(ctx, fmt.Sprint(k), payload(k, ver, n))
					if errors.Is(err, pod.ErrNoSpace) {
						h.Yield()
						continue
					}
					if mode.zombie && (errors.Is(err, pod.ErrFenced) || !mode.selfFence && err != nil) {
						// The fenced host stops (the daemon rejoins); without
						// self-fencing its late stores may also have broken
						// the new owner's descriptors, which then stops too.
						return
					}
					if err != nil {
						panic(err)
					}
					_ = ref
					latest[k] = max(latest[k], version[k])
					if h.ID() == 3 && mode.zombie {
						takenOver = true // host 0 resumes while host 3 publishes on
					}
					if _, err := p.Reclaim(ctx); err != nil {
						if mode.zombie {
							return
						}
						panic(err)
					}
				}
			}
		}
	}
	writer := func(h *ncsim.Host) {
		defer func() { wdone = true }()
		publisher(h, []int{0, 1})()
	}
	recoverer := func(h *ncsim.Host) {
		if mode.zombie {
			for !paused && !wdone {
				h.Yield()
			}
			if wdone {
				return
			}
			res.crashes++
			coord.Expire(0)
			expired = true
			publisher(h, []int{0, 1})()
			takenOver = true
			return
		}
		for !wdone {
			h.Yield()
		}
		if !crashed {
			return
		}
		res.crashes++
		coord.Expire(0)
		publisher(h, []int{0, 1})()
	}
	reader := func(h *ncsim.Host) {
		p, err := pod.Open(ctx, h, h.ID(), coord, pod.Options{Yield: h.Yield})
		if err != nil {
			panic(err)
		}
		p.SetBugs(b)
		buf := make([]byte, 16<<10)
		mine := 0
		for i := 0; i < 400 && mine < 25; i++ {
			if scan {
				desc := rng.IntN(2 * p.Geometry().DescPerChunk)
				d, n, err := p.ReadDesc(desc, buf)
				if err != nil {
					continue // nothing published there, or fallback
				}
				res.reads++
				mine++
				key, ver, ok := check(buf[:n])
				if !ok || ver != d.Aux || key == 0 || key > 2 {
					res.bad++
				}
				continue
			}
			k := uint64(1 + rng.IntN(2))
			want := latest[k]
			n, _, err := p.Get(ctx, fmt.Sprint(k), buf)
			switch {
			case errors.Is(err, pod.ErrNotFound):
				continue
			case errors.Is(err, pod.ErrFallback):
				res.fallbacks++
				continue
			case err != nil:
				panic(err)
			}
			res.reads++
			mine++
			key, ver, ok := check(buf[:n])
			if !ok || key != k || ver < want {
				res.bad++
			}
		}
		res.retries += p.Stats().Retries
	}
	s.Run(writer, reader, reader, recoverer)
	return res
}

const simSeeds = 300

// TestSimFencedZombie: a host stopped past its lease whose chunks another
// host took over, then resumed, never makes a reader accept a stale or
// torn copy — whether it fences itself (pod.Options.Valid, what the daemon
// does) or only the control plane fences it.
func TestSimFencedZombie(t *testing.T) {
	for _, self := range []bool{true, false} {
		for _, scan := range []bool{false, true} {
			t.Run(fmt.Sprintf("selffence=%v/scan=%v", self, scan), func(t *testing.T) {
				var tot simResult
				for seed := uint64(1); seed <= simSeeds; seed++ {
					r := simRunMode(t, seed, pod.Bugs{}, scan, simMode{zombie: true, selfFence: self})
					if r.bad > 0 {
						t.Errorf("seed %d: %d stale or torn copies", seed, r.bad)
					}
					tot.reads += r.reads
					tot.crashes += r.crashes
					tot.fallbacks += r.fallbacks
				}
				t.Logf("%d seeds: %d reads, %d takeovers of a stopped host, %d fallbacks", simSeeds, tot.reads, tot.crashes, tot.fallbacks)
				if tot.crashes < simSeeds/2 || tot.reads < 5000 {
					t.Fatalf("the scenario did not run: %d takeovers, %d reads", tot.crashes, tot.reads)
				}
			})
		}
	}
	// The same scenario without the readers' validation must go wrong:
	// the zombie's late stores really do land under the new owner.
	var bad int
	for seed := uint64(1); seed <= simSeeds; seed++ {
		bad += simRunMode(t, seed, pod.Bugs{NoValidation: true}, false, simMode{zombie: true}).bad
	}
	if bad == 0 {
		t.Fatal("without validation the zombie scenario produced no bad copy: it does not exercise late writes")
	}
	t.Logf("without validation: %d stale or torn copies (the check the protocol's validation makes)", bad)
}

func runSeeds(t *testing.T, seeds uint64, b pod.Bugs, scan bool) simResult {
	var tot simResult
	for seed := uint64(1); seed <= seeds; seed++ {
		r := simRun(t, seed, b, scan)
		if b == (pod.Bugs{}) && r.bad > 0 {
			t.Errorf("seed %d: full protocol returned %d stale or torn copies", seed, r.bad)
		}
		tot.reads += r.reads
		tot.bad += r.bad
		tot.fallbacks += r.fallbacks
		tot.retries += r.retries
		tot.crashes += r.crashes
	}
	t.Logf("%d seeds: %d reads, %d stale/torn, %d retries, %d fallbacks, %d writer crashes",
		seeds, tot.reads, tot.bad, tot.retries, tot.fallbacks, tot.crashes)
	return tot
}

// TestSimFullProtocol: the protocol under the non-coherent simulator over
// 300 seeds (catalog readers and descriptor-scan readers) must never return
// a stale or torn copy, including across writer crashes.
func TestSimFullProtocol(t *testing.T) {
	for _, scan := range []bool{false, true} {
		t.Run(fmt.Sprintf("scan=%v", scan), func(t *testing.T) {
			r := runSeeds(t, simSeeds, pod.Bugs{}, scan)
			if r.bad != 0 {
				t.Fatalf("%d stale/torn reads", r.bad)
			}
			if r.reads < 10000 {
				t.Fatalf("only %d successful reads: the test is not exercising the protocol", r.reads)
			}
			if r.crashes == 0 {
				t.Fatal("no seed crashed the writer")
			}
		})
	}
}

// TestSimSeededBugs removes one protocol step at a time (with the payload
// validation disabled, since validation turns most bugs into retries) and
// asserts that the simulator DOES observe stale or torn copies.
func TestSimSeededBugs(t *testing.T) {
	cases := []struct {
		name string
		b    pod.Bugs
		scan bool
	}{
		{"no-writer-flush", pod.Bugs{NoWriterFlush: true, NoValidation: true}, false},
		{"no-writer-fence", pod.Bugs{NoWriterFence: true, NoValidation: true}, true},
		{"no-reader-invalidate", pod.Bugs{NoReaderInvalidate: true, NoValidation: true}, false},
		{"no-grace-period", pod.Bugs{NoGracePeriod: true, NoValidation: true}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runSeeds(t, simSeeds, c.b, c.scan)
			if r.bad == 0 {
				t.Fatalf("bug %s went unnoticed over %d seeds: the simulator or the oracle is too weak", c.name, simSeeds)
			}
		})
	}
}

// TestSimValidationCatchesBugs: with validation on, the same missing steps
// become retries or fallbacks, never stale copies.
func TestSimValidationCatchesBugs(t *testing.T) {
	for _, b := range []pod.Bugs{{NoWriterFlush: true}, {NoReaderInvalidate: true}, {NoGracePeriod: true}} {
		r := runSeeds(t, 100, b, false)
		if r.bad != 0 {
			t.Fatalf("%+v: validation let %d stale/torn copies through", b, r.bad)
		}
	}
}
