package pager

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

// heldMem is memory a tier hands the pager (a hot segment, a cold arena)
// that faults like a lazily mapped tier window: a shared memory file
// (memfd) mapped here and registered with a userfaultfd that a server
// process serves. The test can then hold one of the pager's UFFDIO_COPYs
// inside the kernel, at a chosen page, after the pager verified that page.
//
// The pager verifies a stretch of a window (a cold extent; a hot run) from
// its first page to its last before it installs from it, so its read of the
// stretch's last page, left missing, is the last step of verification. The server
// then punches the hold page (already verified) out of the memory file,
// which unmaps it here too, and serves the last page. When an install later
// copies the hold page, the kernel's read of it faults to the server, which
// reports the hold and serves the page only when released.
//
// The server is a process of its own because the verifier's fault is a
// user-mode one on a Go thread that cannot be preempted while it waits (it
// is inside the digest's assembly): a goroutine of this process that had
// to serve it could be left without a processor to run on.
type heldMem struct {
	m     *offheap.Mapping
	mfd   *os.File // the memory file
	last  uint64   // the page whose first read ends verification
	cmd   *exec.Cmd
	in    io.WriteCloser
	held  chan struct{} // closed when an install is held at the hold page
	err   chan error    // the server's end
	once  sync.Once
	trace strings.Builder
}

// heldEnv makes the test binary a held-memory server (see serveHeld).
const heldEnv = "AQUIFER_TEST_HELD_SERVER"

type heldConfig struct {
	Base  uint64 `json:"base"`
	Pages uint64 `json:"pages"`
	Last  uint64 `json:"last"`
	Hold  uint64 `json:"hold"`
}

// newHeldMem returns memory of len(truth) bytes whose pages will hold
// truth's; pages are missing until fill or a fault puts them in. last is
// the page whose first read ends verification, hold the page whose copy is
// held.
func newHeldMem(t *testing.T, truth []byte, last, hold uint64) *heldMem {
	t.Helper()
	n := uint64(len(truth)) / ps
	fd, err := unix.MemfdCreate("aquifer-held", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	h := &heldMem{mfd: os.NewFile(uintptr(fd), "held"), last: last, held: make(chan struct{}), err: make(chan error, 1)}
	t.Cleanup(func() { h.mfd.Close() })
	if err := h.mfd.Truncate(int64(len(truth))); err != nil {
		t.Fatal(err)
	}
	if h.m, err = offheap.File(h.mfd, 0, len(truth), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.m.Unmap() })
	u, err := uffd.New()
	if err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
	uf := os.NewFile(uintptr(u.Fd()), "uffd") // owns the fd; the server keeps a copy
	defer uf.Close()
	if _, err := u.API(0); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Register(h.m.Addr(), uintptr(len(truth)), uffd.RegisterModeMissing); err != nil {
		t.Fatal(err)
	}
	truthPath := filepath.Join(t.TempDir(), "truth")
	if err := os.WriteFile(truthPath, truth, 0o600); err != nil {
		t.Fatal(err)
	}
	tf, err := os.Open(truthPath)
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	conf, _ := json.Marshal(heldConfig{Base: uint64(h.m.Addr()), Pages: n, Last: last, Hold: hold})
	h.cmd = exec.Command(exe, "-test.run=^$")
	h.cmd.Env = append(os.Environ(), heldEnv+"="+string(conf))
	h.cmd.ExtraFiles = []*os.File{uf, h.mfd, tf} // fds 3, 4, 5 in the server
	h.cmd.Stderr = &h.trace
	if h.in, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "held" {
				close(h.held)
			}
		}
		h.err <- h.cmd.Wait()
	}()
	t.Cleanup(func() {
		h.unhold()
		h.in.Close()
		select {
		case err := <-h.err:
			if err != nil {
				t.Errorf("held-memory server: %v; %s", err, h.trace.String())
			}
		case <-time.After(30 * time.Second):
			h.cmd.Process.Kill()
			t.Error("the held-memory server did not end")
		}
	})
	return h
}

// unhold lets the held install go on.
func (h *heldMem) unhold() { h.once.Do(func() { io.WriteString(h.in, "release\n") }) }

// fill puts pages [first, first+n) of truth in place (written into the
// memory file, so they map without a fault), except the last page of
// verification, which stays missing until read.
func (h *heldMem) fill(truth []byte, first, n uint64) error {
	for i := first; i < first+n; i++ {
		if i == h.last {
			continue
		}
		if _, err := h.mfd.WriteAt(truth[i*ps:(i+1)*ps], int64(i*ps)); err != nil {
			return err
		}
	}
	return nil
}

// awaitHeld waits until an install is held at the hold page.
func (h *heldMem) awaitHeld(t *testing.T) {
	t.Helper()
	select {
	case <-h.held:
	case err := <-h.err:
		t.Fatalf("the held-memory server ended: %v; %s", err, h.trace.String())
	case <-time.After(30 * time.Second):
		t.Fatal("no install reached the held page")
	}
}

// serveHeld is the held-memory server (a child process): fds 3, 4 and 5
// are the userfaultfd, the memory file and the true content.
func serveHeld(conf string) error {
	var c heldConfig
	if err := json.Unmarshal([]byte(conf), &c); err != nil {
		return err
	}
	u := uffd.FromFd(3)
	mfd := 4
	truth, err := offheap.Anon(int(c.Pages*ps), unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		return err
	}
	if _, err := unix.Pread(5, truth.B, 0); err != nil {
		return err
	}
	release := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() == "release" {
				close(release)
				break
			}
		}
		for sc.Scan() {
		}
		os.Exit(0) // the test is over
	}()
	put := func(i uint64) error {
		_, err := u.Copy(uintptr(c.Base+i*ps), truth.Addr()+uintptr(i*ps), ps, false)
		if uffd.IsExist(err) {
			err = u.Wake(uintptr(c.Base+i*ps), ps)
		}
		return err
	}
	buf := make([]byte, 16*uffd.MsgSize)
	discarded, held := false, false
	for {
		fds := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			return err
		}
		msgs, err := u.ReadMsgs(buf, nil)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Event != uffd.EventPagefault {
				continue
			}
			i := (m.Address - c.Base) / ps
			switch {
			case i == c.Last && !discarded:
				// Verification reached its last page: hold is verified.
				if err := unix.Fallocate(mfd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(c.Hold*ps), ps); err != nil {
					return fmt.Errorf("punching page %d: %w", c.Hold, err)
				}
				discarded = true
			case i == c.Hold && discarded && !held:
				held = true
				fmt.Println("held")
				<-release
			}
			if err := put(i); err != nil {
				return fmt.Errorf("serving page %d: %w", i, err)
			}
		}
	}
}
