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

// learnedReads are the learned extents of one restore in flight.
type learnedReads struct {
	hotIn chan struct{} // closed once the hot set is installed
	done  chan struct{} // closed once every learned extent is in
}

// readLearned starts reading the extents earlier restores of this image
// faulted on, oldest first, and installing them, on background goroutines
// (nil: nothing to read). The reads start at once, beside the hot set's
// pre-install, at demand priority (see fetch); the installs wait for the
// hot set to be in, which they must not slow down: on the two cores
// measured, installs beside the hot copies made the pre-install of a
// 26-MiB learned set 3x slower (docs/evaluation.md).
func (s *Session) readLearned(ctx context.Context) *learnedReads {
	if s.opts.History == nil || s.cold == nil || s.opts.NoPrefetch {
		return nil
	}
	xs := s.opts.History.Extents()
	if len(xs) == 0 {
		return nil
	}
	n := len(s.img.ColdExtents())
	l := &learnedReads{hotIn: make(chan struct{}), done: make(chan struct{})}
	type read struct {
		x int
		e *extent
	}
	arrived := make(chan read, len(xs))
	s.bg.Add(2)
	go func() {
		defer s.bg.Done()
		defer close(arrived)
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
			arrived <- read{x, e}
		}
	}()
	go func() {
		defer s.bg.Done()
		defer close(l.done)
		select {
		case <-l.hotIn:
		case <-ctx.Done():
			return
		}
		for r := range arrived {
			s.installExtent(r.x, r.e)
			if !s.learnedReady.Load() {
				atomic.AddUint64(&s.rep.LearnedBeforeReady, 1)
			}
		}
	}()
	return l
}

// awaitLearned lets the learned extents be installed once the hot set is
// in, and waits for them (bounded, see learnedWaitMin) so that they are
// in before the VM resumes. With EarlyResume, or when the pre-install
// failed, it does not wait.
func (s *Session) awaitLearned(l *learnedReads, t0 time.Time) {
	defer s.learnedReady.Store(true)
	if l == nil {
		return
	}
	close(l.hotIn)
	if s.opts.EarlyResume || s.readyErr != nil {
		return
	}
	wait := min(max(time.Since(t0)/2, learnedWaitMin), learnedWaitMax)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-l.done:
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
