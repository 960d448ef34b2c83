package pager

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aquifer-pool/aquifer/snapimage"
)

// TestSpread: every task runs exactly once, on at most one goroutine per
// CPU; the first error is returned; the helpers' CPU tokens are all given
// back.
func TestSpread(t *testing.T) {
	const n = 1000
	seen := make([]atomic.Int32, n)
	var mu sync.Mutex
	var running, most int
	if err := spread(n, func(_ int, i uint64) error {
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		seen[i].Add(1)
		runtime.Gosched()
		mu.Lock()
		running--
		mu.Unlock()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := range seen {
		if k := seen[i].Load(); k != 1 {
			t.Fatalf("task %d ran %d times", i, k)
		}
	}
	if most > runtime.GOMAXPROCS(0) {
		t.Fatalf("%d tasks ran at once on %d CPUs", most, runtime.GOMAXPROCS(0))
	}
	boom := os.ErrInvalid
	if err := spread(n, func(_ int, i uint64) error {
		if i == 10 {
			return boom
		}
		return nil
	}); err != boom {
		t.Fatalf("spread returned %v, want the failing task's error", err)
	}
	if k := len(spareCPUs()); k != 0 {
		t.Fatalf("%d CPU tokens still held after spread returned", k)
	}
}

// smallTasks makes every pre-install task two pages for the test, so that
// the fixture's hot set is spread over several (and, with a spare CPU,
// over two threads).
func smallTasks(t *testing.T) {
	old := preinstallTask
	preinstallTask = 2
	t.Cleanup(func() { preinstallTask = old })
}

// TestPreinstallSpread: a hot set spread over many tasks is installed
// whole, byte for byte, before ready; with a bad page in the middle the
// restore falls back and still installs every page from checked bytes.
func TestPreinstallSpread(t *testing.T) {
	smallTasks(t)
	t.Run("whole", func(t *testing.T) {
		f := newFixture(t)
		snap, _, _ := f.snapshot(t)
		v := newVM(t)
		r := serveVM(t, snap, Options{}, v)
		if err := r.ready(t); err != nil {
			t.Fatal(err)
		}
		for _, p := range f.pages(snapimage.Hot) {
			f.installed(t, v, p)
		}
		_, nhot, _ := f.img.Counts()
		if rep := r.finish(t); rep.PreinstallPages != nhot || rep.HotFaults != 0 {
			t.Fatalf("report %+v: want all %d hot pages pre-installed and no hot fault", rep, nhot)
		}
	})
	t.Run("fallback", func(t *testing.T) {
		f := newFixture(t)
		snap, good, _ := f.snapshot(t)
		_, nhot, _ := f.img.Counts()
		snap.Hot, snap.HotFallback = newBadHot(t, good, nhot/2), good
		v := newVM(t)
		r := serveVM(t, snap, Options{}, v)
		if err := r.ready(t); err != nil {
			t.Fatal(err)
		}
		for _, p := range f.pages(snapimage.Hot) {
			f.installed(t, v, p)
		}
		if rep := r.finish(t, "hot tier failed; falling back"); rep.PreinstallPages != nhot || rep.HotSource != "local (fallback)" {
			t.Fatalf("report %+v: want all %d hot pages pre-installed, from the fallback", rep, nhot)
		}
	})
}
