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

// heldTier is a hot tier whose segment memory is itself registered with a
// userfaultfd that the test serves, as a lazily mapped tier window would
// fault: the test can then hold the pre-install's UFFDIO_COPY inside the
// kernel, at a chosen page, while the validated window is open.
//
// Hot pages 0..n-2 are present from the start, page n-1 is missing. The
// pager verifies every page in index order before it opens the window, so
// its read of page n-1 is the last step of verification: the test then
// discards page 0 (already verified) and serves n-1. The pre-install copies
// page 0 first; the kernel's read of it faults to the test, which reports
// the hold and serves the page only when released.
type heldTier struct {
	seg, truth *offheap.Mapping
	u          *uffd.FD
	n          uint64
	with       atomic.Int32
	held       chan struct{} // closed when the pre-install is held at page 0
	release    chan struct{}
	unholdOnce sync.Once
	stop       int // eventfd ending the server
	done       chan struct{}
	err        error
}

func newHeldTier(t *testing.T, good restore.HotSource, nhot uint64) *heldTier {
	t.Helper()
	h := &heldTier{n: nhot, held: make(chan struct{}), release: make(chan struct{}), done: make(chan struct{})}
	var err error
	if h.truth, err = offheap.Anon(int(nhot*ps), unix.PROT_READ|unix.PROT_WRITE, 0); err != nil {
		t.Fatal(err)
	}
	if err := good.With(context.Background(), func(seg []byte) error { copy(h.truth.B, seg); return nil }); err != nil {
		t.Fatal(err)
	}
	if h.seg, err = offheap.Anon(int(nhot*ps), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE); err != nil {
		t.Fatal(err)
	}
	if h.u, err = uffd.New(); err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
	if _, err := h.u.API(0); err != nil {
		t.Fatal(err)
	}
	if _, err := h.u.Register(h.seg.Addr(), uintptr(nhot*ps), uffd.RegisterModeMissing); err != nil {
		t.Fatal(err)
	}
	if _, err := h.u.Copy(h.seg.Addr(), h.truth.Addr(), uintptr((nhot-1)*ps), false); err != nil {
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
			t.Errorf("held tier: %v", h.err)
		}
		h.u.Close()
		unix.Close(h.stop)
		h.seg.Unmap()
		h.truth.Unmap()
	})
	return h
}

func (h *heldTier) unhold() { h.unholdOnce.Do(func() { close(h.release) }) }

func (h *heldTier) fill(i uint64) error {
	_, err := h.u.Copy(h.seg.Addr()+uintptr(i*ps), h.truth.Addr()+uintptr(i*ps), ps, false)
	if uffd.IsExist(err) {
		err = h.u.Wake(h.seg.Addr()+uintptr(i*ps), ps)
	}
	return err
}

func (h *heldTier) serve() {
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
			i := (uint64(m.Address) - uint64(h.seg.Addr())) / ps
			switch {
			case i == h.n-1 && !discarded:
				// Verification reached the last page: page 0 is verified.
				if err := unix.Madvise(h.seg.B[:ps], unix.MADV_DONTNEED); err != nil {
					h.err = err
					return
				}
				discarded = true
			case i == 0 && discarded:
				select {
				case <-h.held:
				default:
					close(h.held)
				}
				<-h.release
			}
			if err := h.fill(i); err != nil {
				h.err = err
				return
			}
		}
	}
}

func (h *heldTier) With(_ context.Context, fn func([]byte) error) error {
	h.with.Add(1)
	return fn(h.seg.B)
}

func (h *heldTier) Name() string { return "held" }

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
	select {
	case <-tier.held:
	case <-time.After(30 * time.Second):
		t.Fatal("the pre-install never reached the held page")
	}
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
