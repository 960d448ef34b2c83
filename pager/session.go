package pager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/restore"

	"github.com/aquifer-pool/aquifer/handler"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

// Options tune a Session.
type Options struct {
	// Workers serving demand faults (default 2).
	Workers int
	// EarlyResume reports the VM ready as soon as the long zero runs are
	// left to the kernel and streams the hot set in while it runs (in
	// first-touch order, so the stream stays ahead of the guest; a hot page
	// the guest reaches first is served on demand from the same validated
	// window). The default waits for the whole hot set, as the paper does.
	EarlyResume bool
	// NoPrefetch disables the background cold prefetcher (an ablation:
	// cold pages then come only on demand).
	NoPrefetch bool
	// NoPreinstall serves hot pages on demand instead of before resume
	// (an ablation: what the pre-install buys).
	NoPreinstall bool
	Logger       *slog.Logger
	// OnRemove, if set, observes every balloon (REMOVE) range the VM
	// reports (handler.Options.OnRemove): the daemon logs them.
	OnRemove func(start, end uint64)
	// Adopt, if set, takes over a VM another pager served (adopt.go).
	Adopt *Adopt
	// History, if set, is what earlier restores of this image learned
	// about its cold pages (history.go): its pages are read while the hot
	// set is installed and installed before the VM is reported ready (as
	// many as have arrived by then), and the cold pages this VM still
	// faulted on are added to it when the VM ends.
	History *History
}

// Report describes one served restore.
type Report struct {
	HotSource          string
	ColdSource         string
	Preinstall         time.Duration
	PreinstallPages    uint64
	PreinstallBytes    uint64
	ZeroPagesToKernel  uint64
	ColdDemandExtents  uint64
	ColdPrefetchExtent uint64
	ColdBytesRead      uint64
	ColdFaults         uint64
	HotFaults          uint64
	ZeroFaults         uint64
	ColdReadTime       time.Duration
	// LearnedPages counts the cold pages read because earlier restores
	// faulted on them (Options.History), LearnedBeforeReady those of them
	// installed before the VM was reported ready, LearnedNew the cold pages
	// this restore faulted on that were added to the history.
	LearnedPages       uint64
	LearnedBeforeReady uint64
	LearnedNew         uint64
	Handler            handler.Stats
}

type extent struct {
	done      chan struct{}
	err       error
	installed atomic.Bool
}

// Session serves one VM from an image.
type Session struct {
	img      *snapimage.Image
	hot      restore.HotSource
	fallback restore.HotSource
	cold     restore.ColdSource
	opts     Options
	log      *slog.Logger
	ps       uint64

	h        *handler.Handler
	ctx      context.Context
	ready    chan struct{}
	readyErr error

	hotReady chan struct{}
	hotMu    sync.Mutex
	hotSeg   restore.Segment
	// hotUnchecked: hotSeg's pages are checked as they are installed, so a
	// demand copy from it checks its page itself.
	hotUnchecked bool
	hotUsers     sync.WaitGroup
	hotOnce      sync.Once
	readyOnce    sync.Once
	lateZero     []snapimage.Run

	arena        []byte
	arenaRelease func() error
	extMu        sync.Mutex
	ext          map[int]*extent
	demand       atomic.Int64
	faultedMu    sync.Mutex
	faulted      []uint64 // cold pages demand-faulted, in order
	learnedReady atomic.Bool

	rep     Report
	bg      sync.WaitGroup
	coldDur atomic.Int64

	stages *stagePool // staging buffers for pages stored as sub-pages (huge.go)

	live     atomic.Pointer[handler.Handler] // h, once serving (adopt.go)
	bgMu     sync.RWMutex                    // installs ahead of faults: R; Quiesce: W
	quiesced atomic.Bool
	settled  atomic.Bool // Adopt.Settle returned
}

// New prepares a session that restores snap. Its hot source may be nil
// when the image has no hot pages, its cold source when it has no cold ones.
func New(snap *restore.Snapshot, opts Options) (*Session, error) {
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	img, hot, cold := snap.Image, snap.Hot, snap.Cold
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	_, nhot, ncold := img.Counts()
	if nhot > 0 && hot == nil {
		return nil, errors.New("the image has hot pages but no hot source")
	}
	if ncold > 0 && cold == nil {
		return nil, errors.New("the image has cold pages but no cold source")
	}
	if err := checkHugePool(img); err != nil {
		return nil, err
	}
	s := &Session{img: img, hot: hot, fallback: snap.HotFallback, cold: cold, opts: opts, log: opts.Logger, ps: uint64(img.PageSize()),
		ready: make(chan struct{}), hotReady: make(chan struct{}), ext: map[int]*extent{}}
	if !s.whole() {
		s.stages = stagesFor(int(s.ps))
	}
	if hot != nil {
		s.rep.HotSource = hot.Name()
	}
	if cold != nil {
		s.rep.ColdSource = cold.Name()
		seg := img.Section(snapimage.SecColdSegment)
		var err error
		if s.arena, s.arenaRelease, err = cold.Arena(int(seg.Length)); err != nil {
			return nil, fmt.Errorf("cold arena: %w", err)
		}
	}
	return s, nil
}

func (s *Session) markReady() { s.readyOnce.Do(func() { close(s.ready) }) }

// Ready is closed once the hot set is installed (or installing failed: see
// ReadyErr). Resume the VM only after it.
func (s *Session) Ready() <-chan struct{} { return s.ready }

// ReadyErr is the pre-install error, valid after Ready is closed.
func (s *Session) ReadyErr() error { return s.readyErr }

// Size implements handler.Source.
func (s *Session) Size() int64 { return int64(s.img.MemSize()) }

// Page implements handler.Source for demand faults.
func (s *Session) Page(off, ps uint64) (uintptr, bool, func(), error) {
	if ps != s.ps {
		return 0, false, nil, fmt.Errorf("fault with page size %d on a %d-byte-page image", ps, s.ps)
	}
	c, idx, ok := s.img.Classify(off / ps)
	if !ok {
		return 0, false, nil, fmt.Errorf("page %d outside the image", off/ps)
	}
	switch c {
	case snapimage.Zero:
		atomic.AddUint64(&s.rep.ZeroFaults, 1)
		return 0, true, nil, nil
	case snapimage.Hot:
		atomic.AddUint64(&s.rep.HotFaults, 1)
		<-s.hotReady
		s.hotMu.Lock()
		seg, unchecked := s.hotSeg, s.hotUnchecked
		if seg != nil {
			// Faults during the pre-install window: the segment stays
			// valid until every demand copy from it is done.
			s.hotUsers.Add(1)
			s.hotMu.Unlock()
			if !s.whole() {
				// Rebuilt in a staging buffer unless stored whole in one
				// piece: then seg is read until the copy is done.
				stored, direct := s.hotStored(seg, idx)
				addr, release, err := s.pageSource(snapimage.SecHotSegment, idx, stored, direct)
				if err != nil || release != nil {
					s.hotUsers.Done()
					return addr, false, release, err
				}
				return addr, false, func() { s.hotUsers.Done() }, nil
			}
			addr, _ := seg.Run(idx, 1, ps)
			if unchecked && s.img.VerifyHotPage(idx, offheap.At(addr, int(ps))) != nil {
				// Not the snapshot's page: the pre-install falls back too;
				// this fault takes a checked read (or the fallback's).
				s.hotUsers.Done()
				return s.latePage(idx)
			}
			return addr, false, func() { s.hotUsers.Done() }, nil
		}
		s.hotMu.Unlock()
		return s.latePage(idx)
	default:
		atomic.AddUint64(&s.rep.ColdFaults, 1)
		s.faultedMu.Lock()
		s.faulted = append(s.faulted, idx)
		s.faultedMu.Unlock()
		x, ok := s.img.ExtentOf(idx)
		if !ok {
			return 0, false, nil, fmt.Errorf("cold index %d has no extent", idx)
		}
		s.demand.Add(1)
		e := s.fetch(x, false)
		s.demand.Add(-1)
		if e.err != nil {
			return 0, false, nil, e.err
		}
		// The faulting page is installed (and its vCPU woken) first; the
		// rest of the extent follows asynchronously, off the fault path.
		addr, release, err := s.pageSource(snapimage.SecColdSegment, idx, s.spanOf(snapimage.SecColdSegment, s.arena, idx), true)
		if err != nil {
			return 0, false, nil, err
		}
		return addr, false, func() {
			if release != nil {
				release()
			}
			if !e.installed.Load() {
				s.bg.Add(1)
				go func() {
					defer s.bg.Done()
					s.installExtent(x, e)
				}()
			}
		}, nil
	}
}

// fetch reads and verifies cold extent x once; concurrent callers share it.
func (s *Session) fetch(x int, prefetch bool) *extent {
	s.extMu.Lock()
	e, ok := s.ext[x]
	if !ok {
		e = &extent{done: make(chan struct{})}
		s.ext[x] = e
	}
	s.extMu.Unlock()
	if ok {
		<-e.done
		return e
	}
	ex := s.img.ColdExtents()[x]
	off, n := s.img.ExtentRange(ex)
	dst := s.arena[off : off+n]
	t0 := time.Now()
	e.err = s.cold.Read(s.ctx, off, dst, prefetch)
	s.coldDur.Add(int64(time.Since(t0)))
	if e.err == nil {
		if err := s.img.VerifyExtent(x, dst); err != nil {
			e.err = fmt.Errorf("cold extent %d from %s: %w", x, s.cold.Name(), err)
		}
	}
	atomic.AddUint64(&s.rep.ColdBytesRead, n)
	if prefetch {
		atomic.AddUint64(&s.rep.ColdPrefetchExtent, 1)
	} else {
		atomic.AddUint64(&s.rep.ColdDemandExtents, 1)
	}
	if e.err != nil {
		// Let a later fault retry instead of caching the failure.
		s.extMu.Lock()
		delete(s.ext, x)
		s.extMu.Unlock()
	}
	close(e.done)
	return e
}

// installExtent installs the pages of a fetched extent not yet present.
func (s *Session) installExtent(x int, e *extent) {
	if !s.bgEnter() {
		return
	}
	defer s.bgExit()
	if e.installed.Swap(true) {
		return
	}
	ex := s.img.ColdExtents()[x]
	i, end := ex.First, ex.First+uint64(ex.Pages)
	for i < end {
		// Group cold indices whose guest pages are consecutive.
		g := s.img.ColdPage(i)
		j := i + 1
		for j < end && s.img.ColdPage(j) == g+(j-i) {
			j++
		}
		if _, err := s.installStored(snapimage.SecColdSegment, s.arena, i, g, j-i); err != nil {
			if !uffd.IsGone(err) {
				s.log.Warn("installing cold extent", "extent", x, "err", err)
			}
			return
		}
		i = j
	}
}

// Serve runs the session on a received userfaultfd until the VM exits.
// exitFD is the VM's pidfd, hangupFD the 1.12+ handshake socket (-1: none).
func (s *Session) Serve(ctx context.Context, u *uffd.FD, regions []handshake.Region, exitFD, hangupFD int) (*Report, error) {
	for _, r := range regions {
		if r.PageSize != s.ps {
			return nil, fmt.Errorf("region page size %d, image page size %d", r.PageSize, s.ps)
		}
	}
	hopts := handler.Options{Workers: s.opts.Workers, Logger: s.log, HangupFD: hangupFD, NoHangup: hangupFD < 0, OnRemove: s.opts.OnRemove}
	h, err := handler.New(u, regions, s, hopts)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	s.h = h
	s.markAdopted()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.ctx = ctx

	type served struct {
		st  handler.Stats
		err error
	}
	done := make(chan served, 1)
	go func() {
		st, err := h.Serve(ctx, exitFD)
		done <- served{st, err}
	}()
	s.live.Store(h)

	if err := s.takeOver(ctx); err != nil {
		s.readyErr = err
	} else {
		s.preinstall(ctx)
	}
	s.markReady()
	if errors.Is(s.readyErr, errQuiesced) {
		s.log.Debug("handing over: stopped installing ahead of faults")
	} else if s.readyErr != nil {
		s.log.Error("pre-install failed", "err", s.readyErr)
	} else {
		if len(s.lateZero) > 0 {
			s.bg.Add(1)
			go func() {
				defer s.bg.Done()
				for _, run := range s.lateZero {
					if ctx.Err() != nil || !s.mapZero(run) {
						return
					}
				}
			}()
		}
		if !s.opts.NoPrefetch && s.cold != nil {
			s.bg.Add(1)
			go s.prefetch(ctx)
		}
	}
	r := <-done
	cancel()
	s.bg.Wait()
	s.learn()
	s.rep.Handler = r.st
	s.rep.ColdReadTime = time.Duration(s.coldDur.Load())
	return &s.rep, r.err
}

// Close releases the session's buffers (after Serve returned).
func (s *Session) Close() error {
	var err error
	if s.arenaRelease != nil {
		s.arenaRelease()
		s.arenaRelease = nil
	}
	return err
}

func (s *Session) preinstall(ctx context.Context) {
	t0 := time.Now()
	defer func() { s.rep.Preinstall = time.Since(t0) }()
	learned := s.readLearned(ctx)
	defer s.awaitLearned(learned, t0)
	if s.opts.EarlyResume {
		if !s.zeroRuns() {
			return
		}
		s.markReady()
	}
	_, nhot, _ := s.img.Counts()
	var err error
	if nhot > 0 {
		// 4 KiB pages are checked as they are installed (preinstallRuns),
		// sub-pages all before the first (preinstallHuge).
		checked := !s.whole()
		err = s.withHot(ctx, checked, func(seg restore.Segment) error {
			s.hotMu.Lock()
			s.hotSeg, s.hotUnchecked = seg, !checked
			s.hotMu.Unlock()
			s.openHot()
			defer func() {
				// Close the window: no new demand copy from seg, and wait
				// for the ones in flight before the tier may move on.
				s.hotMu.Lock()
				s.hotSeg, s.hotUnchecked = nil, false
				s.hotMu.Unlock()
				s.hotUsers.Wait()
			}()
			if s.opts.NoPreinstall {
				return nil
			}
			if !s.whole() {
				if !s.bgEnter() {
					return errQuiesced
				}
				n, err := s.preinstallHuge(seg)
				s.bgExit()
				s.rep.PreinstallPages += n
				s.rep.PreinstallBytes = s.rep.PreinstallPages * s.ps
				return err
			}
			n, err := s.preinstallRuns(seg)
			s.rep.PreinstallPages += n
			s.rep.PreinstallBytes = s.rep.PreinstallPages * s.ps
			return err
		})
	}
	s.openHot()
	if err != nil {
		s.readyErr = err
		return
	}
	if !s.opts.EarlyResume {
		s.zeroRuns()
	}
}

// zeroRuns leaves the long zero runs to the kernel now and queues the short
// ones for after resume. It reports false when the VM is gone.
func (s *Session) zeroRuns() bool {
	// Long zero runs before resume (they hold most zero pages), the short
	// ones after it: each is one UFFDIO_UNREGISTER.
	var short []snapimage.Run
	for _, run := range s.img.Runs() {
		if run.Class != snapimage.Zero {
			continue
		}
		if !s.longZeroRun(run) {
			short = append(short, run)
			continue
		}
		if !s.leaveZero(run) {
			return false
		}
	}
	s.lateZero = short
	return true
}

// mapZero maps the kernel's zero page over a short zero run after resume
// (UFFDIO_ZEROPAGE: no VMA split, the VM's mmap lock taken for reading
// only), where an UNREGISTER would split the VM's mapping twice for a few
// pages. Huge pages have no zero page: their runs are left to the kernel.
// It reports false when the VM is gone.
func (s *Session) mapZero(run snapimage.Run) bool {
	if s.ps != handshake.PageSize4K {
		return s.leaveZero(run)
	}
	if !s.bgEnter() {
		return false
	}
	defer s.bgExit()
	n, err := s.h.ZeroQuiet(run.Page*s.ps, uint64(run.Count))
	atomic.AddUint64(&s.rep.ZeroPagesToKernel, n)
	if err != nil {
		if !uffd.IsGone(err) {
			s.log.Warn("mapping a zero run", "page", run.Page, "pages", run.Count, "err", err)
		}
		return false
	}
	return true
}

func (s *Session) leaveZero(run snapimage.Run) bool {
	if !s.bgEnter() {
		return false
	}
	defer s.bgExit()
	if err := s.h.LeaveToKernel(run.Page*s.ps, uint64(run.Count)); err != nil {
		if !uffd.IsGone(err) {
			s.log.Warn("unregistering a zero run", "page", run.Page, "pages", run.Count, "err", err)
		}
		return false
	}
	atomic.AddUint64(&s.rep.ZeroPagesToKernel, uint64(run.Count))
	return true
}

func (s *Session) openHot() {
	s.hotOnce.Do(func() { close(s.hotReady) })
}

// withHot runs fn on the hot segment, falling back to the snapshot's
// HotFallback when the hot tier fails or a page does not match its digest.
// No page is used before it is checked against the image's digest: with
// checkFirst every page is checked before fn runs; without, fn checks each
// page before it installs it (preinstallRuns), and its failures that are
// not the tier's (an install, the VM quiesced) fall back to nothing.
func (s *Session) withHot(ctx context.Context, checkFirst bool, fn func(seg restore.Segment) error) error {
	try := func(src restore.HotSource) (bool, error) {
		tierOK := false // the last failure, if any, is not the tier's
		err := src.With(ctx, func(seg restore.Segment) error {
			tierOK = false
			if want := s.img.Section(snapimage.SecHotSegment).Length; uint64(seg.Len()) < want {
				return fmt.Errorf("hot segment from %s has %d bytes, want %d", src.Name(), seg.Len(), want)
			}
			if checkFirst {
				if err := s.verifyHot(seg, src.Name()); err != nil {
					return err
				}
				tierOK = true
				return fn(seg)
			}
			err := fn(seg)
			var ie *installError
			if err == nil || errors.As(err, &ie) || errors.Is(err, errQuiesced) {
				tierOK = true
				return err
			}
			return fmt.Errorf("hot segment from %s: %w", src.Name(), err)
		})
		return tierOK, err
	}
	ok, err := try(s.hot)
	if err != nil && !ok && s.fallback != nil {
		s.log.Warn("hot tier failed; falling back", "err", err, "fallback", s.fallback.Name())
		s.rep.HotSource = s.fallback.Name() + " (fallback)"
		_, err = try(s.fallback)
	}
	return err
}

// installError is a pre-install's own failure (UFFDIO_COPY into the VM),
// not its hot tier's.
type installError struct{ err error }

func (e *installError) Error() string { return e.err.Error() }
func (e *installError) Unwrap() error { return e.err }

// prefetch streams touched cold extents in touch order, yielding to demand
// reads.
func (s *Session) prefetch(ctx context.Context) {
	defer s.bg.Done()
	for x, ex := range s.img.ColdExtents() {
		if !ex.Touched {
			continue
		}
		for s.demand.Load() > 0 {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(20 * time.Microsecond)
		}
		if ctx.Err() != nil || s.quiesced.Load() {
			return
		}
		s.extMu.Lock()
		_, busy := s.ext[x]
		s.extMu.Unlock()
		if busy {
			continue
		}
		e := s.fetch(x, true)
		if e.err != nil {
			if ctx.Err() == nil {
				s.log.Warn("prefetch", "extent", x, "err", e.err)
			}
			continue
		}
		s.installExtent(x, e)
	}
}

// Inline implements handler.Inliner: zero pages, hot pages once the
// pre-install window is open, and cold pages are served on the fault
// loop's reader thread when theirs is the last fault of a batch (the
// others of the batch go to workers, so faults read together are still
// served concurrently). A cold page's extent read then holds the reader
// for one tier round trip, but a hand-off to a worker costs more: the
// worker's wake-up, a scheduler latency of 0.2-21 ms measured on these
// loaded 2-core VMs, against an RDMA read of a few microseconds on
// hardware (docs/evaluation.md, "The gap to warm"). The price: while the
// reader waits for a slow tier (a memory node failing over), the VM's next
// faults wait too. Only a hot page before the window opens, which waits
// for the tier's window, goes to a worker.
func (s *Session) Inline(off, ps uint64) bool {
	c, _, ok := s.img.Classify(off / ps)
	if !ok || c != snapimage.Hot {
		return true
	}
	select {
	case <-s.hotReady:
		return true
	default:
		return false
	}
}

// latePage serves a hot page after the pre-install window closed (only with
// NoPreinstall, or a page touched while the window was closing): it copies
// the page out of a fresh validated read of the hot segment.
func (s *Session) latePage(idx uint64) (uintptr, bool, func(), error) {
	m, err := offheap.Anon(int(s.ps), unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		return 0, false, nil, err
	}
	err = s.withHot(s.ctx, true, func(seg restore.Segment) error {
		if !s.whole() {
			stored, _ := s.hotStored(seg, idx)
			return s.img.Expand(snapimage.SecHotSegment, idx, stored, m.B)
		}
		copy(m.B, seg.Page(idx, s.ps))
		return nil
	})
	if err != nil {
		m.Unmap()
		return 0, false, nil, err
	}
	return m.Addr(), false, func() { m.Unmap() }, nil
}
