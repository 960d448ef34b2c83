package uffd

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
	"golang.org/x/sys/unix"
)

const ps = 4096

// setup maps n registered pages and a source buffer with distinct content.
func setup(t *testing.T, n int, features uint64) (*FD, *offheap.Mapping, *offheap.Mapping) {
	t.Helper()
	u, err := New()
	if err != nil {
		t.Skipf("userfaultfd unavailable here: %v", err)
	}
	t.Cleanup(func() { u.Close() })
	if _, err := u.API(features); err != nil {
		t.Fatal(err)
	}
	dst, err := offheap.Anon(n*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dst.Unmap() })
	ioctls, err := u.Register(dst.Addr(), uintptr(n*ps), RegisterModeMissing)
	if err != nil {
		t.Fatal(err)
	}
	if ioctls&(IoctlCopy|IoctlWake|IoctlZeropage) != IoctlCopy|IoctlWake|IoctlZeropage {
		t.Fatalf("register ioctls %#x lack COPY/WAKE/ZEROPAGE", ioctls)
	}
	src, err := offheap.Anon(n*ps, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Unmap() })
	for i := range src.B {
		src.B[i] = byte(i/ps + 1 + i%7)
	}
	return u, dst, src
}

// kernelRead makes the kernel read page p of dst (copy_from_user inside
// write(2) to a pipe), so the faulting thread sits in a syscall — safe for
// the Go runtime while this test's own goroutine serves the fault.
func kernelRead(t *testing.T, b []byte) chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Error(err)
			ch <- nil
			return
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		unix.Syscall(unix.SYS_FCNTL, uintptr(p[1]), unix.F_SETPIPE_SZ, uintptr(len(b)))
		n, err := unix.Write(p[1], b)
		if err != nil || n != len(b) {
			t.Errorf("write from registered memory: n=%d err=%v", n, err)
			ch <- nil
			return
		}
		out := make([]byte, len(b))
		if _, err := unix.Read(p[0], out); err != nil {
			t.Error(err)
		}
		ch <- out
	}()
	return ch
}

// nextMsg polls for one event.
func nextMsg(t *testing.T, u *FD) Msg {
	t.Helper()
	buf := make([]byte, MsgSize*4)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		fds := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, 100); err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		msgs, err := u.ReadMsgs(buf, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) > 0 {
			return msgs[0]
		}
	}
	t.Fatal("no userfaultfd event within 5s")
	return Msg{}
}

func TestCopyOnFault(t *testing.T) {
	u, dst, src := setup(t, 4, 0)
	got := kernelRead(t, dst.B[2*ps:3*ps])
	m := nextMsg(t, u)
	if m.Event != EventPagefault || m.Write() || m.Address&^(ps-1) != uint64(dst.Addr()+2*ps) {
		t.Fatalf("unexpected event %v", m.String())
	}
	n, err := u.Copy(dst.Addr()+2*ps, src.Addr()+2*ps, ps, false)
	if err != nil || n != ps {
		t.Fatalf("copy: %d %v", n, err)
	}
	if b := <-got; !bytes.Equal(b, src.B[2*ps:3*ps]) {
		t.Fatal("faulting reader saw wrong content")
	}
	// A second copy of the same page reports EEXIST.
	if _, err := u.Copy(dst.Addr()+2*ps, src.Addr(), ps, false); !IsExist(err) {
		t.Fatalf("second copy: %v, want EEXIST", err)
	}
}

func TestRunDontWakeThenWake(t *testing.T) {
	u, dst, src := setup(t, 8, 0)
	got := kernelRead(t, dst.B[5*ps:5*ps+100])
	m := nextMsg(t, u)
	if m.Event != EventPagefault {
		t.Fatalf("unexpected %v", m.String())
	}
	// Install a contiguous run of 8 pages without waking, then wake.
	n, err := u.Copy(dst.Addr(), src.Addr(), 8*ps, true)
	if err != nil || n != 8*ps {
		t.Fatalf("run copy: %d %v", n, err)
	}
	select {
	case <-got:
		t.Fatal("reader woke without UFFDIO_WAKE despite DONTWAKE")
	case <-time.After(50 * time.Millisecond):
	}
	if err := u.Wake(dst.Addr()+5*ps, ps); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, src.B[5*ps:5*ps+100]) {
		t.Fatal("wrong content after wake")
	}
	if !bytes.Equal(dst.B, src.B) {
		t.Fatal("run copy content differs")
	}
}

func TestZeroPageAndRemove(t *testing.T) {
	u, dst, src := setup(t, 4, FeatureEventRemove)
	got := kernelRead(t, dst.B[ps:2*ps])
	nextMsg(t, u)
	if err := u.ZeroPage(dst.Addr()+ps, ps, false); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, make([]byte, ps)) {
		t.Fatal("zeropage content not zero")
	}
	if _, err := u.Copy(dst.Addr(), src.Addr(), ps, false); err != nil {
		t.Fatal(err)
	}
	// MADV_DONTNEED on a registered range blocks until the REMOVE event is
	// read, so run it in the background.
	done := make(chan error, 1)
	go func() { done <- unix.Madvise(dst.B[:2*ps], unix.MADV_DONTNEED) }()
	m := nextMsg(t, u)
	if m.Event != EventRemove || m.Start != uint64(dst.Addr()) || m.End != uint64(dst.Addr()+2*ps) {
		t.Fatalf("unexpected event %v", m.String())
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The page is missing again: a new fault arrives.
	got = kernelRead(t, dst.B[:ps])
	if m := nextMsg(t, u); m.Event != EventPagefault {
		t.Fatalf("unexpected %v", m.String())
	}
	if err := u.ZeroPage(dst.Addr(), ps, false); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, make([]byte, ps)) {
		t.Fatal("removed page not zero")
	}
}

func TestDecodeMsg(t *testing.T) {
	if _, err := DecodeMsg(make([]byte, 10)); err == nil {
		t.Fatal("short message accepted")
	}
	b := make([]byte, MsgSize)
	b[0] = EventPagefault
	b[8] = PagefaultFlagWrite
	b[16] = 0x34
	b[17] = 0x12
	m, err := DecodeMsg(b)
	if err != nil || !m.Write() || m.Address != 0x1234 {
		t.Fatalf("%+v %v", m, err)
	}
}

func TestErrorsUnwrap(t *testing.T) {
	err := error(&OpError{Op: "UFFDIO_COPY", Err: unix.ESRCH})
	if !IsGone(err) || IsExist(err) || !errors.Is(err, unix.ESRCH) {
		t.Fatal("OpError does not unwrap to its errno")
	}
}

func TestNewDevice(t *testing.T) {
	u, err := NewDevice()
	if err != nil {
		t.Skipf("neither /dev/userfaultfd nor the syscall is available: %v", err)
	}
	defer u.Close()
	if _, err := u.API(FeatureEventRemove); err != nil {
		t.Fatal(err)
	}
}
