package testvm

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	MaybeChild()
	os.Exit(m.Run())
}

// pattern is the content this file's toy handler gives memory-file page p.
func pattern(p uint64) []byte {
	b := bytes.Repeat([]byte{byte(p + 1)}, PageSize)
	binary.LittleEndian.PutUint64(b[8:], p)
	return b
}

// serve is a toy fault loop: every fault gets pattern(page) by UFFDIO_COPY.
func serve(t *testing.T, u *uffd.FD, regions []handshake.Region) {
	src, err := offheap.Anon(PageSize, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		t.Fatal(err)
	}
	stop, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	done := make(chan struct{})
	t.Cleanup(func() {
		unix.Write(stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		<-done
		unix.Close(stop)
		src.Unmap()
	})
	go func() {
		defer close(done)
		buf := make([]byte, 16*uffd.MsgSize)
		fds := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}, {Fd: int32(stop), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
				t.Error(err)
				return
			}
			if fds[1].Revents != 0 {
				return
			}
			msgs, err := u.ReadMsgs(buf, nil)
			if err != nil {
				t.Error(err)
				return
			}
			for _, m := range msgs {
				if m.Event != uffd.EventPagefault {
					continue
				}
				i, _ := handshake.Lookup(regions, m.Address)
				off := regions[i].FileOffset(m.Address)
				copy(src.B, pattern(off/PageSize))
				if _, err := u.Copy(uintptr(m.Address&^(PageSize-1)), src.Addr(), PageSize, false); err != nil && !uffd.IsExist(err) {
					t.Error(err)
				}
			}
		}
	}()
}

func TestTouchWriteRemove(t *testing.T) {
	v := New(t, Options{Size: 16 * PageSize, Split: 8 * PageSize, Remove: true})
	if len(v.Regions) != 2 || v.Regions[1].Offset != 8*PageSize {
		t.Fatalf("regions %+v", v.Regions)
	}
	serve(t, v.UFFD, v.Regions)
	for _, p := range []uint64{0, 7, 8, 15} {
		if r, _ := v.Resident(p); r {
			t.Fatalf("page %d resident before any touch", p)
		}
		if err := v.Touch(p); err != nil {
			t.Fatal(err)
		}
		if r, _ := v.Resident(p); !r {
			t.Fatalf("page %d not resident after its touch", p)
		}
		if !bytes.Equal(v.Bytes(p), pattern(p)) {
			t.Fatalf("page %d: wrong content after touch", p)
		}
	}
	if err := v.Write(9, 0xfeed); err != nil {
		t.Fatal(err)
	}
	want := pattern(9)
	binary.LittleEndian.PutUint64(want, 0xfeed)
	if !bytes.Equal(v.Bytes(9), want) {
		t.Fatal("page 9: write did not land on the served page")
	}
	// The toy loop ignores the REMOVE it reads; the range is zapped anyway.
	if err := v.Remove(7, 2); err != nil {
		t.Fatal(err)
	}
	for _, p := range []uint64{7, 8} {
		if r, _ := v.Resident(p); r {
			t.Fatalf("page %d resident after MADV_DONTNEED", p)
		}
	}
}

func TestChild(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vm.sock")
	l, err := handshake.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := StartChild(t, sock, Options{Size: 8 * PageSize, Split: 4 * PageSize}, handshake.DialectV1_12)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vm, err := handshake.Accept(ctx, l, handshake.AcceptOptions{MemSize: 8 * PageSize, UID: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if vm.Peer.Pid != c.Pid() {
		t.Fatalf("peer pid %d, child %d", vm.Peer.Pid, c.Pid())
	}
	u := uffd.FromFd(vm.UFFD)
	vm.UFFD = -1
	t.Cleanup(func() { u.Close() }) // after the toy loop's cleanup
	serve(t, u, vm.Regions)
	for i, p := range []uint64{1, 5, 6} {
		touch := c.Touch
		if i == 2 {
			touch = c.UserTouch
		}
		got := <-touch(p)
		if got.Err != nil {
			t.Fatal(got.Err)
		}
		if !bytes.Equal(got.Page, pattern(p)) {
			t.Fatalf("child page %d: wrong content", p)
		}
	}
	if err := c.Exit(); err != nil {
		t.Fatalf("child exit: %v", err)
	}
}
