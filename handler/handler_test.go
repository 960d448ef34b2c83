package handler_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/handler"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/internal/testvm"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/wset"
	"golang.org/x/sys/unix"
)

const ps = testvm.PageSize

func TestMain(m *testing.M) {
	testvm.MaybeChild()
	os.Exit(m.Run())
}

// pattern is the snapshot content of memory-file page p in these tests:
// never zero, different for every page.
func pattern(p uint64) []byte {
	b := bytes.Repeat([]byte{byte(p*7 + 1)}, ps)
	binary.LittleEndian.PutUint64(b, p+1)
	binary.LittleEndian.PutUint64(b[ps-8:], ^p)
	return b
}

// memFile writes a memory file of pages pattern pages and opens it.
func memFile(t *testing.T, pages uint64) *handler.MemFile {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mem")
	var b []byte
	for p := uint64(0); p < pages; p++ {
		b = append(b, pattern(p)...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := handler.OpenMemFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// serving is a handler running its fault loop for a test VM.
type serving struct {
	h    *handler.Handler
	done chan result
}

type result struct {
	st  handler.Stats
	err error
}

func serve(t *testing.T, v *testvm.VM, src handler.Source, o handler.Options) *serving {
	t.Helper()
	o.NoHangup = true
	h, err := handler.New(v.UFFD, v.Regions, src, o)
	if err != nil {
		t.Fatal(err)
	}
	s := &serving{h: h, done: make(chan result, 1)}
	go func() {
		st, err := h.Serve(context.Background(), -1)
		s.done <- result{st, err}
	}()
	t.Cleanup(func() {
		h.Stop()
		<-s.done
		h.Close()
	})
	return s
}

// stop ends the fault loop and returns its statistics.
func (s *serving) stop(t *testing.T) handler.Stats {
	t.Helper()
	s.h.Stop()
	r := <-s.done
	s.done <- r // for the cleanup
	if r.err != nil {
		t.Fatalf("Serve: %v", r.err)
	}
	return r.st
}

var (
	waitFor = testvm.WaitFor
	await   = testvm.Await
)

func checkPage(t *testing.T, v *testvm.VM, p uint64, want []byte) {
	t.Helper()
	testvm.CheckPage(t, p, v.Bytes(p), want)
}

// TestServe: demand faults in both regions, read and write, are served
// byte for byte from the memory file, counted and recorded in fault order.
func TestServe(t *testing.T) {
	const pages = 32
	v := testvm.New(t, testvm.Options{Size: pages * ps, Split: 12 * ps})
	s := serve(t, v, memFile(t, pages), handler.Options{Record: true})
	order := []uint64{3, 20, 11, 12, 0, 31}
	writes := map[uint64]bool{20: true, 12: true}
	for _, p := range order {
		want := pattern(p)
		if writes[p] {
			if err := v.Write(p, 0xabcdef+p); err != nil {
				t.Fatal(err)
			}
			binary.LittleEndian.PutUint64(want, 0xabcdef+p)
		} else if err := v.Touch(p); err != nil {
			t.Fatal(err)
		}
		checkPage(t, v, p, want)
	}
	st := s.stop(t)
	if st.Faults != uint64(len(order)) || st.WriteFaults != 2 || st.BytesCopied != st.Faults*ps || st.ZeroFaults != 0 {
		t.Fatalf("stats %+v: want %d faults, 2 writes, every one a page copied", st, len(order))
	}
	if st.Exit != "stopped" {
		t.Fatalf("exit %q, want stopped", st.Exit)
	}
	tr := s.h.Trace()
	if len(tr.Accesses) != len(order) {
		t.Fatalf("recorded %d first touches, want %d", len(tr.Accesses), len(order))
	}
	for i, a := range tr.Accesses {
		kind := wset.Read
		if writes[a.Page] {
			kind = wset.Write
		}
		if a.Page != order[i] || a.Kind != kind {
			t.Fatalf("recorded touch %d: page %d kind %v, want page %d kind %v", i, a.Page, a.Kind, order[i], kind)
		}
	}
}

// heldSource holds demand faults on one page until released, counting the
// calls, and sends that page's faults to worker threads.
type heldSource struct {
	handler.Source
	page    uint64
	calls   atomic.Int32
	release chan struct{}
}

func (g *heldSource) Page(off, ps uint64) (uintptr, bool, func(), error) {
	if off/ps == g.page {
		g.calls.Add(1)
		<-g.release
	}
	return g.Source.Page(off, ps)
}

func (g *heldSource) Inline(off, ps uint64) bool { return off/ps != g.page }

// TestTwoVCPUsSamePage: two vCPUs fault on the same page at once; one copy
// wins, the other meets EEXIST; both are woken, the page is right and the
// loser is counted as Exists.
func TestTwoVCPUsSamePage(t *testing.T) {
	const pages, p = 8, 5
	v := testvm.New(t, testvm.Options{Size: pages * ps})
	src := &heldSource{Source: memFile(t, pages), page: p, release: make(chan struct{})}
	s := serve(t, v, src, handler.Options{Workers: 2})
	a, b := v.TouchAsync(p), v.TouchAsync(p)
	waitFor(t, "both faults to reach the source", func() bool { return src.calls.Load() == 2 })
	close(src.release)
	await(t, "vCPU A", a)
	await(t, "vCPU B", b)
	checkPage(t, v, p, pattern(p))
	st := s.stop(t)
	if st.Faults != 1 || st.Exists != 1 {
		t.Fatalf("stats %+v: want 1 fault served and 1 EEXIST", st)
	}
}

// TestQuietInstallWokenByFaultLoop: a page installed without a wake
// (InstallQuiet, as the pre-install does) while a vCPU waits on it leaves
// the vCPU asleep until the fault loop serves its event: the copy then meets
// EEXIST and the loop must wake it.
func TestQuietInstallWokenByFaultLoop(t *testing.T) {
	const pages, p = 8, 2
	v := testvm.New(t, testvm.Options{Size: pages * ps})
	mem := memFile(t, pages)
	src := &heldSource{Source: mem, page: p, release: make(chan struct{})}
	s := serve(t, v, src, handler.Options{})
	touch := v.TouchAsync(p)
	waitFor(t, "the fault to reach the source", func() bool { return src.calls.Load() == 1 })
	addr, err := mem.Addr(p*ps, ps)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.h.InstallQuiet(p*ps, addr, 1); n != 1 || err != nil {
		t.Fatalf("InstallQuiet: %d pages, %v", n, err)
	}
	close(src.release)
	await(t, "the vCPU", touch)
	checkPage(t, v, p, pattern(p))
	if st := s.stop(t); st.Exists != 1 || st.Installed != 1 || st.Faults != 0 {
		t.Fatalf("stats %+v: want the fault answered by EEXIST after 1 page installed", st)
	}
}

// nextFault reads the userfaultfd directly (no fault loop is running) until
// a fault event arrives.
func nextFault(t *testing.T, u *uffd.FD) uffd.Msg {
	t.Helper()
	buf := make([]byte, uffd.MsgSize)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		fds := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
		if n, _ := unix.Poll(fds, 100); n == 0 {
			continue
		}
		msgs, err := u.ReadMsgs(buf, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.Event == uffd.EventPagefault {
				return m
			}
		}
	}
	t.Fatal("no fault event")
	return uffd.Msg{}
}

// TestInstallWakes: Install (the variant with a wake) releases a vCPU that
// faulted on one of its pages even with no fault loop running, skips pages
// already present and reports what it installed.
func TestInstallWakes(t *testing.T) {
	const pages = 8
	v := testvm.New(t, testvm.Options{Size: pages * ps})
	mem := memFile(t, pages)
	h, err := handler.New(v.UFFD, v.Regions, mem, handler.Options{NoHangup: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	touch := v.TouchAsync(3)
	if m := nextFault(t, v.UFFD); m.Address&^(ps-1) != uint64(v.Addr(3)) {
		t.Fatalf("fault at %#x, want page 3 at %#x", m.Address, v.Addr(3))
	}
	addr, _ := mem.Addr(3*ps, ps)
	if n, err := h.Install(3*ps, addr, 1); n != 1 || err != nil {
		t.Fatalf("Install: %d pages, %v", n, err)
	}
	await(t, "the vCPU", touch)
	checkPage(t, v, 3, pattern(3))
	addr, _ = mem.Addr(2*ps, 3*ps)
	if n, err := h.Install(2*ps, addr, 3); n != 2 || err != nil {
		t.Fatalf("Install over a present page: %d pages, %v; want 2", n, err)
	}
	for p := uint64(2); p < 5; p++ {
		checkPage(t, v, p, pattern(p))
	}
}

// TestBalloonRemove: after a REMOVE (balloon inflation) a page that held
// snapshot content is served as a zero page, and never gets snapshot
// content again, neither from a fault nor from an Install; pages outside
// the range keep theirs.
func TestBalloonRemove(t *testing.T) {
	const pages = 16
	v := testvm.New(t, testvm.Options{Size: pages * ps, Split: 8 * ps, Remove: true})
	mem := memFile(t, pages)
	s := serve(t, v, mem, handler.Options{})
	for p := uint64(5); p < 12; p++ {
		if err := v.Touch(p); err != nil {
			t.Fatal(err)
		}
		checkPage(t, v, p, pattern(p))
	}
	// Remove pages 6..10: one madvise per region, so two REMOVE events;
	// each returns once the handler has read it.
	if err := v.Remove(6, 5); err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, ps)
	for _, p := range []uint64{6, 8} {
		if err := v.Touch(p); err != nil {
			t.Fatal(err)
		}
		checkPage(t, v, p, zero)
	}
	addr, _ := mem.Addr(4*ps, 8*ps)
	n, err := s.h.Install(4*ps, addr, 8) // pages 4..11
	if err != nil {
		t.Fatal(err)
	}
	// 4 is missing and not removed; 5 and 11 are present; 6 and 8 are
	// removed and now present; 7, 9 and 10 are removed and missing.
	if n != 1 {
		t.Fatalf("Install over a ballooned range installed %d pages, want 1 (page 4)", n)
	}
	for _, p := range []uint64{7, 9, 10} {
		if r, _ := v.Resident(p); r {
			t.Fatalf("removed page %d was installed", p)
		}
		if err := v.Touch(p); err != nil {
			t.Fatal(err)
		}
		checkPage(t, v, p, zero)
	}
	for _, p := range []uint64{4, 5, 11} {
		checkPage(t, v, p, pattern(p))
	}
	st := s.stop(t)
	if st.Removes != 2 || st.ZeroFaults != 5 {
		t.Fatalf("stats %+v: want 2 REMOVEs and 5 zero faults", st)
	}
}

// TestLeaveToKernel: pages left to the kernel are unregistered for real: a
// touch there is filled by the kernel with zeros (the source would have
// given other bytes) and never reaches the handler.
func TestLeaveToKernel(t *testing.T) {
	const pages = 16
	v := testvm.New(t, testvm.Options{Size: pages * ps, Split: 8 * ps})
	s := serve(t, v, memFile(t, pages), handler.Options{})
	if err := s.h.LeaveToKernel(6*ps, 4); err != nil { // 6..9, across regions
		t.Fatal(err)
	}
	zero := make([]byte, ps)
	for p := uint64(6); p < 10; p++ {
		if err := v.Touch(p); err != nil {
			t.Fatal(err)
		}
		checkPage(t, v, p, zero)
	}
	if err := v.Touch(10); err != nil {
		t.Fatal(err)
	}
	checkPage(t, v, 10, pattern(10))
	if st := s.stop(t); st.Faults != 1 || st.Unregistered != 4 {
		t.Fatalf("stats %+v: want only page 10 faulted, 4 pages unregistered", st)
	}
}

// TestZeroQuiet: pages mapped to the zero page ahead of faults read as
// zeros, take a write without reaching the handler (the kernel copies the
// zero page), and a page already present in the range is skipped and keeps
// its bytes; the range may cross regions.
func TestZeroQuiet(t *testing.T) {
	const pages = 16
	v := testvm.New(t, testvm.Options{Size: pages * ps, Split: 8 * ps})
	s := serve(t, v, memFile(t, pages), handler.Options{})
	if err := v.Touch(7); err != nil { // present, from the memory file
		t.Fatal(err)
	}
	if n, err := s.h.ZeroQuiet(5*ps, 5); n != 4 || err != nil { // 5..9, across regions, 7 present
		t.Fatalf("ZeroQuiet: %d pages, %v; want 4 (page 7 present)", n, err)
	}
	zero := make([]byte, ps)
	for _, p := range []uint64{5, 6, 9} {
		if err := v.Touch(p); err != nil {
			t.Fatal(err)
		}
		checkPage(t, v, p, zero)
	}
	if err := v.Write(8, 0xfeed); err != nil {
		t.Fatal(err)
	}
	written := make([]byte, ps)
	binary.LittleEndian.PutUint64(written, 0xfeed)
	checkPage(t, v, 8, written)
	checkPage(t, v, 7, pattern(7))
	if err := v.Touch(10); err != nil {
		t.Fatal(err)
	}
	checkPage(t, v, 10, pattern(10))
	if st := s.stop(t); st.Faults != 2 || st.ZeroMapped != 4 || st.Installed != 0 {
		t.Fatalf("stats %+v: want pages 7 and 10 faulted, 4 zero pages mapped, none installed", st)
	}
	if _, err := s.h.ZeroQuiet(pages*ps, 1); err == nil {
		t.Fatal("ZeroQuiet beyond the regions succeeded")
	}
}

// TestExit: the loop ends when the VM's exit descriptor becomes readable
// or its 1.12+ handshake socket closes, saying which.
func TestExit(t *testing.T) {
	const pages = 4
	t.Run("exit fd", func(t *testing.T) {
		v := testvm.New(t, testvm.Options{Size: pages * ps})
		h, err := handler.New(v.UFFD, v.Regions, memFile(t, pages), handler.Options{NoHangup: true})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(efd)
		unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		st, err := h.Serve(context.Background(), efd)
		if err != nil || st.Exit != "vm exited" {
			t.Fatalf("Serve: %q, %v", st.Exit, err)
		}
	})
	t.Run("hangup", func(t *testing.T) {
		v := testvm.New(t, testvm.Options{Size: pages * ps})
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(sp[0])
		h, err := handler.New(v.UFFD, v.Regions, memFile(t, pages), handler.Options{HangupFD: sp[0]})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		unix.Close(sp[1])
		st, err := h.Serve(context.Background(), -1)
		if err != nil || st.Exit != "vm closed the handshake socket" {
			t.Fatalf("Serve: %q, %v", st.Exit, err)
		}
	})
}

// TestUnwatchedVMMDies: a VMM that nothing watches (no pidfd, no
// handshake socket: a 1.7 VMM whose pidfd could not be opened) and that
// dies while no fault or install is under way still ends serving, named:
// the fault loop's idle probe finds its memory gone.
func TestUnwatchedVMMDies(t *testing.T) {
	const pages = 8
	c, vm, u := testvm.AcceptChild(t, testvm.Options{Size: pages * ps}, handshake.DialectV1_7)
	h, err := handler.New(u, vm.Regions, memFile(t, pages), handler.Options{NoHangup: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	done := make(chan result, 1)
	go func() {
		st, err := h.Serve(context.Background(), -1)
		done <- result{st, err}
	}()
	if got := <-c.Touch(3); got.Err != nil || !bytes.Equal(got.Page, pattern(3)) {
		t.Fatalf("page 3: %v", got.Err)
	}
	select {
	case r := <-done:
		t.Fatalf("serving ended while the VMM lived: %+v, %v", r.st, r.err)
	case <-time.After(300 * time.Millisecond): // past several idle probes
	}
	c.Kill()
	select {
	case r := <-done:
		if r.err != nil || r.st.Exit != "vm gone (ESRCH)" || r.st.Faults != 1 {
			t.Fatalf("Serve: %+v, %v; want the one fault served and the VM's going named", r.st, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serving did not end when the unwatched VMM died")
	}
}

// TestNewRefusesRegionsBeyondTheFile: regions that reach past the memory
// file are refused before serving.
func TestNewRefusesRegionsBeyondTheFile(t *testing.T) {
	v := testvm.New(t, testvm.Options{Size: 8 * ps})
	if _, err := handler.New(v.UFFD, v.Regions, memFile(t, 4), handler.Options{}); err == nil {
		t.Fatal("regions of 8 pages over a 4-page memory file were accepted")
	}
}

// TestVMMProcess: a VMM in a process of its own, the way Firecracker is:
// its user-mode and kernel-mode faults are served byte for byte, and its
// exit ends serving, named.
func TestVMMProcess(t *testing.T) {
	const pages = 16
	c, vm, u := testvm.AcceptChild(t, testvm.Options{Size: pages * ps, Split: 8 * ps}, handshake.DialectV1_7)
	h, err := handler.New(u, vm.Regions, memFile(t, pages), handler.Options{NoHangup: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	done := make(chan result, 1)
	go func() {
		st, err := h.Serve(context.Background(), vm.Watch.PidFD)
		done <- result{st, err}
	}()
	for _, p := range []uint64{1, 9, 15} {
		for _, touch := range []func(uint64) <-chan testvm.Touched{c.UserTouch, c.Touch} {
			got := <-touch(p)
			if got.Err != nil {
				t.Fatal(got.Err)
			}
			if !bytes.Equal(got.Page, pattern(p)) {
				t.Fatalf("page %d: the VMM process read other bytes", p)
			}
		}
	}
	if err := c.Exit(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.st.Exit != "vm exited" || r.st.Faults != 3 {
			t.Fatalf("Serve: %+v, %v; want 3 faults served and the exit seen", r.st, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serving did not end when the VMM exited")
	}
}
