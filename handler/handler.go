package handler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/wset"
	"golang.org/x/sys/unix"
)

// Options tune a Handler.
type Options struct {
	// Workers is the number of fault-serving threads (default 2).
	Workers int
	// Record, when true, records every first touch (page, read/write, time
	// since the first fault) in fault order; see Handler.Trace.
	Record bool
	// Logger receives warnings; nil means slog.Default().
	Logger *slog.Logger
	// HangupFD, if >= 0, is the handshake connection of a Firecracker that
	// keeps it open until it exits (1.12+): end of file there means the VM
	// is gone. Use -1 (or leave NoHangup set) for older dialects.
	HangupFD int
	// NoHangup disables HangupFD (the zero value of HangupFD is fd 0).
	NoHangup bool
	// OnRemove, when set, is called on the reader thread with every
	// REMOVE range (host addresses [start, end)) after it was applied:
	// an observer (balloon accounting, tests); it must not block.
	OnRemove func(start, end uint64)
	// SpinPoll keeps the reader polling without sleeping for this long
	// after an event (0: always sleep in poll). Worth it only with a
	// dedicated core.
	SpinPoll time.Duration
}

// Stats summarise one serving session.
type Stats struct {
	Faults       uint64 // page faults served (read + write)
	WriteFaults  uint64
	ZeroFaults   uint64 // faults answered with zero pages (removed ranges)
	BytesCopied  uint64
	Exists       uint64 // EEXIST: page already present (woken)
	Retries      uint64 // EAGAIN retries after pending events
	Removes      uint64 // REMOVE events
	Unexpected   uint64 // events Firecracker never enables
	Installed    uint64 // pages installed ahead of faults (Install)
	Unregistered uint64 // zero pages left to the kernel (LeaveToKernel)
	ZeroMapped   uint64 // zero pages mapped ahead of faults (ZeroQuiet)
	Wall         time.Duration
	// Exit says why serving ended.
	Exit string
}

func (s Stats) String() string {
	extra := ""
	if s.Installed > 0 || s.Unregistered > 0 || s.ZeroMapped > 0 {
		extra = fmt.Sprintf(", pre-installed %d pages, %d zero pages left to the kernel, %d mapped to the zero page", s.Installed, s.Unregistered, s.ZeroMapped)
	}
	return fmt.Sprintf("faults served %d (%d write, %d zero), bytes copied %d (%.1f MiB), eexist %d, eagain retries %d, removes %d%s, wall %v, exit: %s",
		s.Faults, s.WriteFaults, s.ZeroFaults, s.BytesCopied, float64(s.BytesCopied)/(1<<20),
		s.Exists, s.Retries, s.Removes, extra, s.Wall.Round(time.Microsecond), s.Exit)
}

type region struct {
	handshake.Region
	removed []atomic.Uint64 // bit per page
	// present (2 MiB regions only) marks pages this handler installed, so
	// an EEXIST on a page it never installed is recognised as the
	// kernel's answer to an exhausted hugetlb pool (huge.go).
	present []atomic.Uint64
}

func (r *region) pageIndex(a uint64) uint64 { return (a - r.BaseHostVirtAddr) / r.PageSize }

func (r *region) isRemoved(p uint64) bool { return r.removed[p/64].Load()&(1<<(p%64)) != 0 }

func (r *region) markRemoved(p uint64) {
	w := &r.removed[p/64]
	for {
		o := w.Load()
		if w.CompareAndSwap(o, o|1<<(p%64)) {
			return
		}
	}
}

type fault struct {
	addr  uint64
	write bool
	seq   uint64
	at    time.Duration
}

// Handler serves one VM.
type Handler struct {
	u       *uffd.FD
	regions []*region
	src     Source
	opts    Options
	log     *slog.Logger

	removeMu sync.RWMutex // copies: R; applying REMOVE: W

	genMu sync.Mutex
	gen   uint64 // bumped after every event batch the reader consumed
	genCh chan struct{}

	zero *offheap.Mapping // zero buffer for 2 MiB removed pages

	stats Stats
	start time.Time
	first atomic.Int64 // ns since start of the first fault, -1 until then
	recMu sync.Mutex
	rec   []recEntry
	gone  atomic.Bool
	// probe is a guest page this handler copied snapshot content into
	// (address+1; 0: none, or given back to the balloon since), which
	// vmGone re-installs to learn whether the VM's memory still exists.
	probe  atomic.Uint64
	fatal  atomic.Pointer[error]
	stopFD int

	firstServed atomic.Int64 // when the first fault was served (unix ns; 0: none)
}

type recEntry struct {
	seq uint64
	a   wset.Access
}

// New prepares a handler for a VM whose memory is described by regions and
// whose content comes from src.
func New(u *uffd.FD, regions []handshake.Region, src Source, opts Options) (*Handler, error) {
	if err := handshake.Validate(regions, src.Size()); err != nil {
		return nil, err
	}
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	h := &Handler{u: u, src: src, opts: opts, log: opts.Logger, genCh: make(chan struct{})}
	h.first.Store(-1)
	for _, r := range regions {
		n := r.Size / r.PageSize
		reg := &region{Region: r, removed: make([]atomic.Uint64, (n+63)/64)}
		if r.PageSize != handshake.PageSize4K {
			reg.present = make([]atomic.Uint64, (n+63)/64)
		}
		h.regions = append(h.regions, reg)
		if r.PageSize != handshake.PageSize4K && h.zero == nil {
			z, err := offheap.Anon(int(r.PageSize), unix.PROT_READ, 0)
			if err != nil {
				return nil, err
			}
			h.zero = z
		}
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	h.stopFD = efd
	return h, nil
}

// Stop asks Serve to return; safe from any goroutine.
func (h *Handler) Stop() {
	var one = [8]byte{1}
	unix.Write(h.stopFD, one[:])
}

// Close releases the handler's own resources (not the uffd).
func (h *Handler) Close() error {
	unix.Close(h.stopFD)
	return h.zero.Unmap()
}

func (h *Handler) lookup(a uint64) *region {
	for _, r := range h.regions {
		if r.Contains(a) {
			return r
		}
	}
	return nil
}

// Serve runs until the VM exits (exitFD, a pidfd, becomes readable; -1 for
// none), the VM's mm disappears (ESRCH), ctx is done or Stop is called. It
// returns the statistics; the error is non-nil only for a failure that
// prevented serving (not for the VM exiting).
func (h *Handler) Serve(ctx context.Context, exitFD int) (Stats, error) {
	h.start = time.Now()
	stopCtx := context.AfterFunc(ctx, h.Stop)
	defer stopCtx()

	work := make(chan fault, 1024)
	var wg sync.WaitGroup
	for i := 0; i < h.opts.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for f := range work {
				h.serveFault(f, false)
			}
		}()
	}

	runtime.LockOSThread()
	exit, err := h.readLoop(work, exitFD)
	runtime.UnlockOSThread()
	close(work)
	wg.Wait()
	st := h.counters()
	st.Wall = time.Since(h.start)
	st.Exit = exit
	if p := h.fatal.Load(); p != nil && err == nil {
		err = *p
	}
	return st, err
}

// counters reads the statistics. Install, InstallQuiet and LeaveToKernel
// may still be adding to them from other goroutines (a pager's background
// installs), so every shared counter is loaded atomically; Removes and
// Unexpected belong to the reader, which is Serve's own goroutine.
func (h *Handler) counters() Stats {
	s := &h.stats
	return Stats{Faults: atomic.LoadUint64(&s.Faults), WriteFaults: atomic.LoadUint64(&s.WriteFaults),
		ZeroFaults: atomic.LoadUint64(&s.ZeroFaults), BytesCopied: atomic.LoadUint64(&s.BytesCopied),
		Exists: atomic.LoadUint64(&s.Exists), Retries: atomic.LoadUint64(&s.Retries), Removes: s.Removes,
		Unexpected: s.Unexpected, Installed: atomic.LoadUint64(&s.Installed), Unregistered: atomic.LoadUint64(&s.Unregistered),
		ZeroMapped: atomic.LoadUint64(&s.ZeroMapped)}
}

func (h *Handler) readLoop(work chan<- fault, exitFD int) (string, error) {
	fds := []unix.PollFd{{Fd: int32(h.u.Fd()), Events: unix.POLLIN}, {Fd: int32(h.stopFD), Events: unix.POLLIN}}
	exitIdx, hupIdx := -1, -1
	if exitFD >= 0 {
		exitIdx = len(fds)
		fds = append(fds, unix.PollFd{Fd: int32(exitFD), Events: unix.POLLIN})
	}
	if !h.opts.NoHangup && h.opts.HangupFD >= 0 {
		hupIdx = len(fds)
		fds = append(fds, unix.PollFd{Fd: int32(h.opts.HangupFD), Events: unix.POLLIN | unix.POLLRDHUP})
	}
	buf := make([]byte, 64*uffd.MsgSize)
	msgs := make([]uffd.Msg, 0, 64)
	var seq uint64
	var lastEvent time.Time
	var pending *fault
	for {
		if h.gone.Load() {
			return "vm gone (ESRCH)", nil
		}
		if p := h.fatal.Load(); p != nil {
			return "error", *p
		}
		for i := range fds {
			fds[i].Revents = 0
		}
		timeout := 100
		if time.Since(lastEvent) < h.opts.SpinPoll {
			timeout = 0 // adaptive spinning: faults come in bursts
		}
		n, err := unix.Poll(fds, timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "error", fmt.Errorf("poll: %w", err)
		}
		if n == 0 && timeout > 0 && exitIdx < 0 && hupIdx < 0 && h.vmGone() {
			return "vm gone (ESRCH)", nil
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return "error", fmt.Errorf("userfaultfd poll error %#x", fds[0].Revents)
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			lastEvent = time.Now()
			msgs, err = h.u.ReadMsgs(buf, msgs[:0])
			if err != nil {
				return "error", err
			}
			for _, m := range msgs {
				switch m.Event {
				case uffd.EventPagefault:
					at := time.Since(h.start)
					h.first.CompareAndSwap(-1, int64(at))
					seq++
					if pending != nil {
						work <- *pending
					}
					pending = &fault{addr: m.Address, write: m.Write(), seq: seq, at: at}
				case uffd.EventRemove:
					h.applyRemove(m.Start, m.End, true)
				default:
					h.stats.Unexpected++
					h.log.Warn("unexpected userfaultfd event", "event", m.String())
				}
			}
			h.bumpGen()
			if pending != nil {
				// The last fault of a batch is served on this thread when
				// the source can do it without blocking: a hand-off to a
				// worker costs a thread wakeup, which on a virtualised host
				// is as dear as the copy itself.
				if h.canInline(pending.addr) {
					if !h.serveFault(*pending, true) {
						work <- *pending
					}
				} else {
					work <- *pending
				}
				pending = nil
			}
		}
		// The VM's going is named before a stop: serving stops itself
		// (Stop) when a copy finds the VM gone.
		if exitIdx >= 0 && fds[exitIdx].Revents&unix.POLLIN != 0 {
			return "vm exited", nil
		}
		if hupIdx >= 0 && fds[hupIdx].Revents != 0 {
			return "vm closed the handshake socket", nil
		}
		if fds[1].Revents&unix.POLLIN != 0 {
			if h.gone.Load() {
				return "vm gone (ESRCH)", nil
			}
			return "stopped", nil
		}
	}
}

// vmGone says, for a VM nothing watches (no pidfd, no handshake socket)
// after a quiet poll, whether its memory is gone. Installs notice a dead
// VM by ESRCH, but an install can also succeed just after the VMM died
// (while something still holds its mm), and when that was the last one
// nothing else would ever end serving. Re-installing a page already
// copied answers EEXIST while the VM lives and ESRCH once its mm is gone;
// it installs nothing (a page the balloon took meanwhile reads zeros,
// as such a page does).
func (h *Handler) vmGone() bool {
	p := h.probe.Load()
	if p == 0 {
		return false
	}
	page := p - 1
	r := h.lookup(page)
	if r == nil {
		return false
	}
	h.removeMu.RLock()
	defer h.removeMu.RUnlock()
	if _, err := h.zeroFill(page, r.PageSize, true); uffd.IsGone(err) {
		h.gone.Store(true)
		return true
	}
	return false
}

// zeroFill installs a zero page of size ps at page: UFFDIO_ZEROPAGE for
// 4 KiB pages, a copy of the zero buffer for huge ones (hugetlb has no
// ZEROPAGE). It returns the bytes installed.
func (h *Handler) zeroFill(page, ps uint64, dontWake bool) (int64, error) {
	if ps == handshake.PageSize4K {
		if err := h.u.ZeroPage(uintptr(page), uintptr(ps), dontWake); err != nil {
			return 0, err
		}
		return int64(ps), nil
	}
	return h.u.Copy(uintptr(page), h.zero.Addr(), uintptr(ps), dontWake)
}

func (h *Handler) bumpGen() {
	h.genMu.Lock()
	h.gen++
	close(h.genCh)
	h.genCh = make(chan struct{})
	h.genMu.Unlock()
}

func (h *Handler) waitGen(old uint64) {
	h.genMu.Lock()
	if h.gen != old {
		h.genMu.Unlock()
		return
	}
	ch := h.genCh
	h.genMu.Unlock()
	select {
	case <-ch:
	case <-time.After(5 * time.Millisecond):
	}
}

func (h *Handler) curGen() uint64 {
	h.genMu.Lock()
	defer h.genMu.Unlock()
	return h.gen
}

// applyRemove marks [start, end) removed; observe counts it as an event
// of this fault loop and reports it to Options.OnRemove.
func (h *Handler) applyRemove(start, end uint64, observe bool) {
	h.removeMu.Lock()
	defer h.removeMu.Unlock()
	if observe {
		h.stats.Removes++
	}
	for _, r := range h.regions {
		lo, hi := max(start, r.BaseHostVirtAddr), min(end, r.End())
		if lo >= hi {
			continue
		}
		// Partially covered pages at the edges are not removed: the
		// balloon works in whole pages, and the kernel zaps whole pages.
		first := (lo - r.BaseHostVirtAddr + r.PageSize - 1) / r.PageSize
		last := (hi - r.BaseHostVirtAddr) / r.PageSize
		for p := first; p < last; p++ {
			r.markRemoved(p)
			r.clearPresent(p)
		}
		if a := h.probe.Load(); a != 0 && a-1 >= r.BaseHostVirtAddr+first*r.PageSize && a-1 < r.BaseHostVirtAddr+last*r.PageSize {
			h.probe.CompareAndSwap(a, 0)
		}
	}
	if observe && h.opts.OnRemove != nil {
		h.opts.OnRemove(start, end)
	}
}

// Inliner is implemented by sources that say which faults to hand to
// worker threads: those whose serving may block for long (waiting on
// another party); a fault served on the reader saves a thread wake-up but
// holds the reader meanwhile.
type Inliner interface {
	Inline(off, ps uint64) bool
}

func (h *Handler) canInline(addr uint64) bool {
	in, ok := h.src.(Inliner)
	if !ok {
		return true
	}
	r := h.lookup(addr)
	if r == nil {
		return true
	}
	return in.Inline(r.Offset+r.pageIndex(addr&^(r.PageSize-1))*r.PageSize, r.PageSize)
}

// serveFault installs the faulting page. Inline (on the reader thread) it
// must not wait for the reader: on EAGAIN it returns false and the caller
// hands the fault to a worker.
func (h *Handler) serveFault(f fault, inline bool) bool {
	r := h.lookup(f.addr)
	if r == nil {
		err := fmt.Errorf("fault at %#x outside every region", f.addr)
		h.fatal.CompareAndSwap(nil, &err)
		return true
	}
	ps := r.PageSize
	page := f.addr &^ (ps - 1)
	idx := r.pageIndex(page)
	for {
		gen := h.curGen()
		h.removeMu.RLock()
		removed := r.isRemoved(idx)
		var err error
		var n int64
		var done func()
		zeroSrc := false
		if removed {
			n, err = h.zeroFill(page, ps, false)
		} else {
			var src uintptr
			var zero bool
			src, zero, done, err = h.src.Page(r.Offset+idx*ps, ps)
			switch {
			case err != nil:
			case zero:
				_, err = h.zeroFill(page, ps, false)
				n, zeroSrc = 0, true
			default:
				n, err = h.u.Copy(uintptr(page), src, uintptr(ps), false)
			}
		}
		if err == nil {
			r.setPresent(idx, 1) // under the lock a REMOVE takes to clear it
			if !removed && !zeroSrc {
				h.probe.Store(page + 1) // not zero: never left to the kernel
			}
		}
		h.removeMu.RUnlock()
		if done != nil {
			done()
		}
		if err != nil && uffd.IsExist(err) && r.exhausted(idx) {
			// Never installed here: hugetlb's answer to an empty pool.
			werr := h.poolExhausted(uintptr(page), err)
			h.fatal.CompareAndSwap(nil, &werr)
			h.Stop()
			return true
		}
		switch {
		case err == nil:
			h.served()
			atomic.AddUint64(&h.stats.Faults, 1)
			if f.write {
				atomic.AddUint64(&h.stats.WriteFaults, 1)
			}
			if removed || zeroSrc {
				atomic.AddUint64(&h.stats.ZeroFaults, 1)
			} else {
				atomic.AddUint64(&h.stats.BytesCopied, uint64(n))
			}
			if h.opts.Record && !removed {
				h.record(f, (r.Offset+idx*ps)/ps)
			}
			return true
		case uffd.IsExist(err):
			h.served()
			atomic.AddUint64(&h.stats.Exists, 1)
			if werr := h.u.Wake(uintptr(page), uintptr(ps)); werr != nil && !uffd.IsGone(werr) {
				h.log.Warn("wake after EEXIST failed", "addr", page, "err", werr)
			}
			return true
		case uffd.IsAgain(err):
			atomic.AddUint64(&h.stats.Retries, 1)
			if inline {
				return false
			}
			h.waitGen(gen)
			continue
		case uffd.IsGone(err):
			h.gone.Store(true)
			h.Stop()
			return true
		default:
			if errors.Is(err, unix.ENOENT) {
				// The page is no longer registered: either the VM unmapped
				// its memory (it is exiting) or LeaveToKernel unregistered
				// it while this fault was on its way. UFFDIO_UNREGISTER is
				// meant to wake the faults queued there, yet on 6.18 a
				// fault racing it was seen queued, read here and left
				// asleep for good (a pagerd adoption test hung ~1 run in
				// 100 under load until this wake). Waking it is harmless
				// either way: it faults again and the kernel fills the page.
				if werr := h.u.Wake(uintptr(page), uintptr(ps)); werr != nil && !uffd.IsGone(werr) {
					h.log.Debug("wake of an unregistered page failed", "addr", page, "err", werr)
				}
				return true
			}
			if errors.Is(err, unix.EINVAL) {
				h.log.Warn("fault could not be served", "addr", page, "err", err)
				return true
			}
			werr := fmt.Errorf("serving fault at %#x: %w", f.addr, err)
			h.fatal.CompareAndSwap(nil, &werr)
			h.Stop()
			return true
		}
	}
}

func (h *Handler) record(f fault, page uint64) {
	k := wset.Read
	if f.write {
		k = wset.Write
	}
	first := time.Duration(h.first.Load())
	h.recMu.Lock()
	h.rec = append(h.rec, recEntry{seq: f.seq, a: wset.Access{Page: page, T: f.at - first, Kind: k}})
	h.recMu.Unlock()
}

// Trace returns the recorded first touches in fault order (Options.Record).
func (h *Handler) Trace() *wset.Trace {
	h.recMu.Lock()
	defer h.recMu.Unlock()
	rec := append([]recEntry(nil), h.rec...)
	sort.Slice(rec, func(i, j int) bool { return rec[i].seq < rec[j].seq })
	ps := uint32(handshake.PageSize4K)
	if len(h.regions) > 0 {
		ps = uint32(h.regions[0].PageSize)
	}
	t := &wset.Trace{PageSize: ps, MemSize: uint64(h.src.Size()), Source: "aquifer handle --record"}
	seen := make(map[uint64]bool, len(rec))
	for _, e := range rec {
		if seen[e.a.Page] {
			continue
		}
		seen[e.a.Page] = true
		t.Accesses = append(t.Accesses, e.a)
	}
	return t
}
