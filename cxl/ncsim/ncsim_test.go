package ncsim

import "testing"

// TestNonCoherence checks the basic hardware behaviours the protocol tests
// rely on: without flush the device never sees a store; a stale cached line
// survives until invalidated; flush+fence+invalidate+fence transfers data.
func TestNonCoherence(t *testing.T) {
	s := New(Config{Size: 4096, Hosts: 2, Seed: 1})
	w, r := s.Host(0), s.Host(1)
	if got := r.Load64(64); got != 0 {
		t.Fatalf("fresh device word = %d", got)
	}
	w.Store64(64, 42)
	if got := r.Load64(64); got != 0 {
		t.Fatalf("reader saw an unflushed store: %d", got)
	}
	w.Flush(64, 8)
	w.Fence()
	if got := r.Load64(64); got != 0 {
		t.Fatalf("reader's cached line should still be stale, got %d", got)
	}
	r.Invalidate(64, 8)
	r.FullFence()
	if got := r.Load64(64); got != 42 {
		t.Fatalf("after flush/fence/invalidate/fence reader saw %d, want 42", got)
	}
	// Crash drops dirty data.
	w.Store64(128, 7)
	w.crash()
	r.Invalidate(128, 8)
	r.FullFence()
	if got := r.Load64(128); got != 0 {
		t.Fatalf("crashed host's dirty line reached the device: %d", got)
	}
}

// TestFalseSharing shows why a line must have a single writer: two hosts
// writing different words of one line lose one host's update on write-back.
func TestFalseSharing(t *testing.T) {
	s := New(Config{Size: 4096, Hosts: 2, Seed: 2})
	a, b := s.Host(0), s.Host(1)
	a.Store64(0, 1)
	b.Store64(8, 2)
	a.Flush(0, 64)
	a.Fence()
	b.Flush(0, 64)
	b.Fence()
	if d := s.Device(); d[0] == 1 {
		t.Fatalf("expected host 0's word to be lost by host 1's whole-line write-back")
	}
}

// TestScheduler runs threads under chaos and checks determinism per seed.
func TestScheduler(t *testing.T) {
	run := func(seed uint64) Stats {
		s := New(DefaultConfig(1<<14, 3, seed))
		f := func(h *Host) {
			for i := 0; i < 200; i++ {
				off := int64(h.ID()*4096 + (i%64)*64)
				h.Store64(off, uint64(i))
				h.Flush(off, 8)
				h.Fence()
			}
		}
		s.Run(f, f, f)
		return s.Stats()
	}
	a, b := run(7), run(7)
	if a != b {
		t.Fatalf("same seed, different runs: %+v vs %+v", a, b)
	}
	if a.Steps < 1800 || a.Evictions == 0 || a.Prefetches == 0 {
		t.Fatalf("scheduler/chaos did not run: %+v", a)
	}
}
