package pager

import (
	"context"
	"sync/atomic"
	"time"
)

// Learned cold extents (Options.History): read and installed beside the
// hot set's pre-install, before the VM is reported ready as far as they
// have arrived by then, the rest right after.

// A finished pre-install waits for learned reads still in flight at most
// half as long as it took itself, at least learnedWaitMin and at most
// learnedWaitMax. Past it the VM is reported ready and the reads go on
// beside it: a slow or failing memory node must not hold a resume that the
// hot set allows.
const (
	learnedWaitMin = time.Millisecond
	learnedWaitMax = 5 * time.Millisecond
)

// readLearned starts reading the extents earlier restores of this image
// faulted on, oldest first, on a background goroutine, installing each as
// it arrives; the returned channel is closed once every one is in (nil:
// nothing to read). The reads go through the cold source's prefetch path:
// they never delay a demand read, and before resume there is none.
func (s *Session) readLearned(ctx context.Context) chan struct{} {
	if s.opts.History == nil || s.cold == nil || s.opts.NoPrefetch {
		return nil
	}
	xs := s.opts.History.Extents()
	if len(xs) == 0 {
		return nil
	}
	n := len(s.img.ColdExtents())
	done := make(chan struct{})
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		defer close(done)
		for _, x := range xs {
			if ctx.Err() != nil || s.quiesced.Load() {
				return
			}
			if x < 0 || x >= n {
				continue
			}
			e := s.fetch(x, learnedRead)
			if e.err != nil {
				// Left to demand: a fault on it reads it again.
				s.log.Debug("reading a learned cold extent", "extent", x, "err", e.err)
				continue
			}
			s.installExtent(x, e)
			if !s.learnedReady.Load() {
				atomic.AddUint64(&s.rep.LearnedBeforeReady, 1)
			}
		}
	}()
	return done
}

// awaitLearned waits, once the hot set is in, for the learned extents still
// being read (bounded, see learnedWaitMin), so that they are installed
// before the VM resumes. With EarlyResume, or when the
// pre-install failed, it does not wait.
func (s *Session) awaitLearned(read chan struct{}, t0 time.Time) {
	defer s.learnedReady.Store(true)
	if read == nil || s.opts.EarlyResume || s.readyErr != nil {
		return
	}
	wait := min(max(time.Since(t0)/2, learnedWaitMin), learnedWaitMax)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-read:
	case <-t.C:
	}
}

// learn adds the extents this VM demand-faulted to the image's history.
func (s *Session) learn() {
	if s.opts.History == nil {
		return
	}
	s.faultedMu.Lock()
	faults := s.faulted
	s.faulted = nil
	s.faultedMu.Unlock()
	exts := s.img.ColdExtents()
	s.rep.LearnedNew = uint64(s.opts.History.Learn(faults, func(x int) uint64 {
		_, n := s.img.ExtentRange(exts[x])
		return n
	}))
}
