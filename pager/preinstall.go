package pager

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/restore"
)

// preinstallTask is about how many hot pages one task of a pre-install
// covers (consecutive runs, a run never split): small enough that two
// threads share even a small hot set evenly, large enough that handing
// tasks out costs nothing next to their copies.
var preinstallTask uint64 = 64

// preinstallRuns installs a hot set of whole 4 KiB pages from seg, run by
// run: a run is one UFFDIO_COPY unless it crosses from one piece of the
// segment to the next. Each run's pages are checked against the image's
// digests just before the run is copied, so a page that is not the
// snapshot's is never installed (the tier then retries or falls back, and
// the pages already in are checked ones), and the check is not a pass of
// its own over the whole segment before the first copy. The runs are shared
// between the calling goroutine and a helper on every spare CPU (spread):
// the pages of one VM do not wait for each other, nor the copies for the
// checks. It returns the pages installed.
func (s *Session) preinstallRuns(seg restore.Segment) (uint64, error) {
	runs := s.img.HotRuns()
	var starts []int // the first run of each task
	var acc uint64
	for i, r := range runs {
		if acc == 0 {
			starts = append(starts, i)
		}
		if acc += uint64(r.Count); acc >= preinstallTask {
			acc = 0
		}
	}
	starts = append(starts, len(runs))
	var installed atomic.Uint64
	err := spread(uint64(len(starts)-1), func(_ int, t uint64) error {
		for _, run := range runs[starts[t]:starts[t+1]] {
			for page, idx, left := run.Page, run.Index, uint64(run.Count); left > 0; {
				addr, k := seg.Run(idx, left, s.ps)
				if k == 0 {
					return fmt.Errorf("hot run at page %d lies beyond the %d-byte hot segment", run.Page, seg.Len())
				}
				b := offheap.At(addr, int(k*s.ps))
				for j := uint64(0); j < k; j++ {
					if err := s.img.VerifyHotPage(idx+j, b[j*s.ps:(j+1)*s.ps]); err != nil {
						return err
					}
				}
				if !s.bgEnter() {
					return errQuiesced
				}
				n, err := s.h.InstallQuiet(page*s.ps, addr, k)
				s.bgExit()
				installed.Add(n)
				if err != nil {
					return &installError{fmt.Errorf("pre-installing hot run at page %d: %w", run.Page, err)}
				}
				page, idx, left = page+k, idx+k, left-k
			}
		}
		return nil
	})
	return installed.Load(), err
}

// spareCPUs holds a token for each helper goroutine running a pre-install's
// tasks, at most one per CPU beyond the first: with several pre-installs at
// once (concurrent restores) there is no spare CPU and each runs on its own
// goroutine, as many threads as the machine has cores.
var spareCPUs = sync.OnceValue(func() chan struct{} {
	return make(chan struct{}, max(0, runtime.GOMAXPROCS(0)-1))
})

// spread runs fn(w, t) for every task t in [0, n) on the calling goroutine
// and on as many helpers as there are spare CPUs (up to n-1): see fanOut.
func spread(n uint64, fn func(w int, t uint64) error) error {
	sem := spareCPUs()
	take := func() bool {
		select {
		case sem <- struct{}{}:
			return true
		default:
			return false
		}
	}
	return fanOut(n, int(min(n, uint64(cap(sem))+1))-1, take, func() { <-sem }, fn)
}

// parallel runs fn(w, i) for i in [0, n) on up to preinstallWorkers()
// goroutines, the calling one among them: see fanOut.
func parallel(n uint64, fn func(w int, i uint64) error) error {
	return fanOut(n, int(min(uint64(preinstallWorkers()), n))-1, nil, nil, fn)
}

// fanOut runs fn(w, t) for every task t in [0, n), in increasing order, on
// the calling goroutine (worker 0) and on up to extra helpers (workers 1,
// 2, ...), each started only while take (nil: always) grants it, and give
// called when it ends. The first error stops it and is returned; a task fn
// was running when another failed runs to its end.
func fanOut(n uint64, extra int, take func() bool, give func(), fn func(w int, t uint64) error) error {
	var next atomic.Uint64
	var first atomic.Pointer[error]
	work := func(w int) {
		for first.Load() == nil {
			t := next.Add(1) - 1
			if t >= n {
				return
			}
			if err := fn(w, t); err != nil {
				first.CompareAndSwap(nil, &err)
				return
			}
		}
	}
	var wg sync.WaitGroup
	for w := 1; w <= extra && (take == nil || take()); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if give != nil {
				defer give()
			}
			work(w)
		}()
	}
	work(0)
	wg.Wait()
	if p := first.Load(); p != nil {
		return *p
	}
	return nil
}
