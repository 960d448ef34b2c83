package pager

import (
	"context"
	"slices"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/snapimage"
)

// Learned cold pages (Options.History): read beside the hot set's
// pre-install into a buffer of their own, verified page by page, and
// installed once the hot set is in: before the VM is reported ready as far
// as they have arrived by then, the rest right after.

// A finished pre-install waits for learned pages still in flight at most
// half as long as it took itself, at least learnedWaitMin and at most
// learnedWaitMax. Past it the VM is reported ready and the installs go on
// beside it: a slow or failing memory node must not hold a resume that the
// hot set allows.
const (
	learnedWaitMin = time.Millisecond
	learnedWaitMax = 5 * time.Millisecond
)

// learnedReads are the learned pages of one restore in flight.
type learnedReads struct {
	hotIn chan struct{} // closed once the hot set is installed
	done  chan struct{} // closed once every learned page is in
}

// learnedRun is a run of consecutive learned cold pages, read together.
type learnedRun struct {
	first, n uint64 // cold indices [first, first+n)
	off      uint64 // byte offset of the run in the cold segment
	at       uint64 // byte offset of the run in the learned buffer
}

// readLearned starts reading the cold pages earlier restores of this image
// faulted on, and installing them, on two background goroutines (nil:
// nothing to read). The reads start at once, beside the hot set's
// pre-install, at demand priority (a read on the prefetch path waits while
// any other VM's demand read is in flight), one per run of consecutive
// cold pages, into a buffer of the session's own (never the cold arena,
// which a demand read of the same extent may be writing). The installs
// wait for the hot set to be in, which they must not slow down. Images of
// huge pages stored as sub-pages are not served so (their cold pages are
// rebuilt through staging buffers).
func (s *Session) readLearned(ctx context.Context) *learnedReads {
	if s.opts.History == nil || s.cold == nil || s.opts.NoPrefetch || !s.whole() {
		return nil
	}
	_, _, ncold := s.img.Counts()
	var pages []uint64
	for _, p := range s.opts.History.Pages() {
		if p < ncold {
			pages = append(pages, p)
		}
	}
	if len(pages) == 0 {
		return nil
	}
	slices.Sort(pages)
	var runs []learnedRun
	for i := 0; i < len(pages); {
		j := i + 1
		for j < len(pages) && pages[j] == pages[j-1]+1 {
			j++
		}
		off, _ := s.img.Span(snapimage.SecColdSegment, pages[i])
		runs = append(runs, learnedRun{first: pages[i], n: uint64(j - i), off: off, at: uint64(i) * s.ps})
		i = j
	}
	buf, release, err := s.cold.Arena(len(pages) * int(s.ps))
	if err != nil {
		s.log.Debug("no buffer for learned cold pages", "err", err)
		return nil
	}
	l := &learnedReads{hotIn: make(chan struct{}), done: make(chan struct{})}
	arrived := make(chan learnedRun, len(runs))
	s.bg.Add(2)
	go func() {
		defer s.bg.Done()
		defer close(arrived)
		for _, r := range runs {
			if ctx.Err() != nil || s.quiesced.Load() {
				return
			}
			dst := buf[r.at : r.at+r.n*s.ps]
			err := s.cold.Read(ctx, r.off, dst, false)
			atomic.AddUint64(&s.rep.ColdBytesRead, uint64(len(dst)))
			for k := uint64(0); err == nil && k < r.n; k++ {
				err = s.img.VerifyColdPage(r.first+k, dst[k*s.ps:(k+1)*s.ps])
			}
			if err != nil {
				// Left to demand: a fault on them reads their extent.
				s.log.Debug("reading learned cold pages", "first", r.first, "pages", r.n, "err", err)
				continue
			}
			atomic.AddUint64(&s.rep.LearnedPages, r.n)
			arrived <- r
		}
	}()
	go func() {
		defer s.bg.Done()
		defer release()
		defer close(l.done)
		install := true
		select {
		case <-l.hotIn:
		case <-ctx.Done():
			install = false
		}
		// Until the reader is done with buf (arrived closed): it is
		// released on return.
		for r := range arrived {
			install = install && s.installLearned(buf, r)
		}
	}()
	return l
}

// installLearned installs a run of learned pages from the learned buffer,
// one UFFDIO_COPY per stretch whose guest pages are consecutive too; it
// reports false when the VM is gone or being handed over.
func (s *Session) installLearned(buf []byte, r learnedRun) bool {
	if !s.bgEnter() {
		return false
	}
	defer s.bgExit()
	base := offheap.AddrOf(buf)
	for k := uint64(0); k < r.n; {
		g := s.img.ColdPage(r.first + k)
		j := k + 1
		for j < r.n && s.img.ColdPage(r.first+j) == g+(j-k) {
			j++
		}
		n, err := s.h.InstallQuiet(g*s.ps, base+uintptr(r.at+k*s.ps), j-k)
		if !s.learnedReady.Load() {
			atomic.AddUint64(&s.rep.LearnedBeforeReady, n)
		}
		if err != nil {
			return false
		}
		k = j
	}
	return true
}

// awaitLearned lets the learned pages be installed once the hot set is in,
// and waits for them (bounded, see learnedWaitMin) so that they are in
// before the VM resumes. With EarlyResume, or when the pre-install failed,
// it does not wait.
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

// learn adds the cold pages this VM demand-faulted to the image's history.
func (s *Session) learn() {
	if s.opts.History == nil {
		return
	}
	s.faultedMu.Lock()
	faults := s.faulted
	s.faulted = nil
	s.faultedMu.Unlock()
	s.rep.LearnedNew = uint64(s.opts.History.Learn(faults))
}
