package pager

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

// heldMem is memory a tier hands the pager (a hot segment, a cold arena)
// that is itself registered with a userfaultfd the test serves, as a lazily
// mapped tier window would fault: the test can then hold one of the
// pager's UFFDIO_COPYs inside the kernel, at a chosen page, after the pager
// has verified that page.
//
// The pager verifies a window (a hot segment, a cold extent) from its first
// page to its last before it installs from it, so its read of the window's
// last page, left missing, is the last step of verification: the test then
// discards the hold page (already verified) and serves the last one. When
// an install later copies the hold page, the kernel's read of it faults to
// the test, which reports the hold and serves the page only when released.
type heldMem struct {
	m, truth *offheap.Mapping
	u        *uffd.FD
	// last is the page whose first read ends verification; hold the page
	// whose copy is held.
	last, hold uint64
	held       chan struct{} // closed when an install is held at hold
	release    chan struct{}
	unholdOnce sync.Once
	stop       int // eventfd ending the server
	done       chan struct{}
	err        error
}

// newHeldMem returns memory of len(truth) bytes whose pages will hold
// truth's; pages are missing until fill or a fault puts them in.
func newHeldMem(t *testing.T, truth []byte, last, hold uint64) *heldMem {
	t.Helper()
	h := &heldMem{last: last, hold: hold, held: make(chan struct{}), release: make(chan struct{}), done: make(chan struct{})}
	var err error
	if h.truth, err = offheap.Anon(len(truth), unix.PROT_READ|unix.PROT_WRITE, 0); err != nil {
		t.Fatal(err)
	}
	copy(h.truth.B, truth)
	if h.m, err = offheap.Anon(len(truth), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE); err != nil {
		t.Fatal(err)
	}
	if h.u, err = uffd.New(); err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
	if _, err := h.u.API(0); err != nil {
		t.Fatal(err)
	}
	if _, err := h.u.Register(h.m.Addr(), uintptr(len(truth)), uffd.RegisterModeMissing); err != nil {
		t.Fatal(err)
	}
	if h.stop, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	go h.serve()
	t.Cleanup(func() {
		h.unhold()
		unix.Write(h.stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		<-h.done
		if h.err != nil {
			t.Errorf("held memory: %v", h.err)
		}
		h.u.Close()
		unix.Close(h.stop)
		h.m.Unmap()
		h.truth.Unmap()
	})
	return h
}

func (h *heldMem) unhold() { h.unholdOnce.Do(func() { close(h.release) }) }

// fill puts pages [first, first+n) in place, except the last page of
// verification, which stays missing until read.
func (h *heldMem) fill(first, n uint64) error {
	for i := first; i < first+n; i++ {
		if i != h.last {
			if err := h.put(i); err != nil {
				return err
			}
		}
	}
	return nil
}

func (h *heldMem) put(i uint64) error {
	_, err := h.u.Copy(h.m.Addr()+uintptr(i*ps), h.truth.Addr()+uintptr(i*ps), ps, false)
	if uffd.IsExist(err) {
		err = h.u.Wake(h.m.Addr()+uintptr(i*ps), ps)
	}
	return err
}

func (h *heldMem) serve() {
	defer close(h.done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, 16*uffd.MsgSize)
	fds := []unix.PollFd{{Fd: int32(h.u.Fd()), Events: unix.POLLIN}, {Fd: int32(h.stop), Events: unix.POLLIN}}
	discarded := false
	for {
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			h.err = err
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		msgs, err := h.u.ReadMsgs(buf, nil)
		if err != nil {
			h.err = err
			return
		}
		for _, m := range msgs {
			if m.Event != uffd.EventPagefault {
				continue
			}
			i := (uint64(m.Address) - uint64(h.m.Addr())) / ps
			switch {
			case i == h.last && !discarded:
				// Verification reached its last page: hold is verified.
				if err := unix.Madvise(h.m.B[h.hold*ps:(h.hold+1)*ps], unix.MADV_DONTNEED); err != nil {
					h.err = err
					return
				}
				discarded = true
			case i == h.hold && discarded:
				select {
				case <-h.held:
				default:
					close(h.held)
				}
				<-h.release
			}
			if err := h.put(i); err != nil {
				h.err = err
				return
			}
		}
	}
}

// awaitHeld waits until an install is held at the hold page.
func (h *heldMem) awaitHeld(t *testing.T) {
	t.Helper()
	select {
	case <-h.held:
	case <-time.After(30 * time.Second):
		t.Fatal("no install reached the held page")
	}
}

// heldTier is a hot tier serving its segment from held memory: the
// pre-install is held at hot page 0 (the first it copies) once the whole
// segment is verified.
type heldTier struct {
	*heldMem
	with atomic.Int32
}

func newHeldTier(t *testing.T, good restore.HotSource, nhot uint64) *heldTier {
	t.Helper()
	var truth []byte
	if err := good.With(context.Background(), func(seg []byte) error { truth = append(truth, seg...); return nil }); err != nil {
		t.Fatal(err)
	}
	h := &heldTier{heldMem: newHeldMem(t, truth, nhot-1, 0)}
	if err := h.fill(0, nhot); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *heldTier) With(_ context.Context, fn func([]byte) error) error {
	h.with.Add(1)
	return fn(h.m.B)
}

func (h *heldTier) Name() string { return "held" }

// heldCold is a cold tier whose reads land in held memory (its arena):
// the install of one extent is held at a chosen page once the extent is
// verified.
type heldCold struct{ *heldMem }

func newHeldCold(t *testing.T, f *fixture, x int, hold uint64) *heldCold {
	t.Helper()
	sec := f.img.Section(snapimage.SecColdSegment)
	truth := make([]byte, sec.Length)
	if _, err := f.file.ReadAt(truth, int64(sec.Offset)); err != nil {
		t.Fatal(err)
	}
	e := f.img.ColdExtents()[x]
	return &heldCold{newHeldMem(t, truth, e.First+uint64(e.Pages)-1, e.First+hold)}
}

func (c *heldCold) Read(_ context.Context, off uint64, dst []byte, _ bool) error {
	return c.fill(off/ps, uint64(len(dst))/ps)
}

func (c *heldCold) Arena(n int) ([]byte, func() error, error) {
	return c.m.B[:n], func() error { return nil }, nil
}

func (c *heldCold) Name() string { return "held" }

// TestHotFaultInsidePreinstallWindow: a vCPU touches a hot page while the
// pre-install is still copying (held in the kernel at the first hot page):
// the fault is served from the same validated window, byte for byte, and
// the vCPU woken, before the pre-install moves on; the pre-install then
// skips that page.
func TestHotFaultInsidePreinstallWindow(t *testing.T) {
	// The pager's verification reads the held tier from user mode on a Go
	// thread that cannot be preempted while it waits in the fault (it is in
	// the digest's assembly). A stop-the-world for GC in that moment would
	// wait for it while the tier's server goroutine waits for the world:
	// keep the GC off while the tier can fault.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	f := newFixture(t)
	snap, good, _ := f.snapshot(t)
	_, nhot, _ := f.img.Counts()
	tier := newHeldTier(t, good, nhot)
	snap.Hot = tier
	v := newVM(t)
	r := serveVM(t, snap, Options{}, v)
	t.Cleanup(tier.unhold) // before the session's cleanup waits for it
	tier.awaitHeld(t)
	hotPages := f.pages(snapimage.Hot)
	first := f.img.HotPage(0)
	for _, p := range hotPages {
		if resident(t, v, p) {
			t.Fatalf("hot page %d installed while the pre-install is held at its first page", p)
		}
	}
	p := f.img.HotPage(nhot / 2)
	await(t, "the hot fault inside the window", v.TouchAsync(p))
	f.check(t, p, v.Bytes(p))
	select {
	case <-r.s.Ready():
		t.Fatal("ready while the pre-install is held")
	default:
	}
	if resident(t, v, first) {
		t.Fatal("the held page was installed before its release")
	}
	if n := tier.with.Load(); n != 1 {
		t.Fatalf("the hot tier opened %d windows, want 1 (the fault must be served from the pre-install's)", n)
	}
	tier.unhold()
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	for _, q := range hotPages {
		f.check(t, q, v.Bytes(q)) // all installed: reading does not fault
	}
	rep := r.finish(t)
	if rep.HotFaults != 1 || rep.PreinstallPages != nhot-1 || rep.Handler.Faults != 1 {
		t.Fatalf("report %+v: want 1 hot fault served and the other %d hot pages pre-installed", rep, nhot-1)
	}
}
