package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An independent Firecracker double: it shares no code with Aquifer's
// handshake, uffd or guest packages. It maps guest memory the way
// Firecracker does (anonymous, MAP_PRIVATE|MAP_NORESERVE), registers it
// MISSING on a userfaultfd (O_CLOEXEC|O_NONBLOCK, UFFDIO_API with
// EVENT_REMOVE), sends the region list in the chosen dialect with the fd in
// one sendmsg, then reads every page of guest memory and compares it with
// the memory file. It runs in its own process (this test binary, started
// with fcDoubleEnv set), because a userfaultfd's faults must come from a
// process other than the handler's.

const fcDoubleEnv = "AQUIFER_E2E_FCDOUBLE" // socket|mem|dialect[|slow]

// Kernel ABI constants (linux/userfaultfd.h), written out here on purpose.
const (
	uffdAPI          = 0xAA
	uffdioAPI        = 0xc018aa3f
	uffdioRegister   = 0xc020aa00
	uffdModeMissing  = 1
	uffdFeatRemove   = 1 << 3 // UFFD_FEATURE_EVENT_REMOVE
	fcDoubleExitDiff = 3
)

type fcDoubleResult struct {
	Pages      int    `json:"pages"`
	Mismatches int    `json:"mismatches"`
	First      int    `json:"first_mismatch"`
	Err        string `json:"err,omitempty"`
}

// runFCDouble runs the double against socket and returns what it read.
func runFCDouble(t *testing.T, ctx context.Context, socket, mem, dialect string) fcDoubleResult {
	t.Helper()
	r, err := fcDoubleRun(ctx, socket, mem, dialect)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fcDoubleRun runs the double; safe off the test's goroutine.
func fcDoubleRun(ctx context.Context, socket, mem, dialect string) (fcDoubleResult, error) {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%s|%s", fcDoubleEnv, socket, mem, dialect))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Run()
	var r fcDoubleResult
	for _, line := range strings.Split(out.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "FCDOUBLE "); ok {
			err := json.Unmarshal([]byte(rest), &r)
			return r, err
		}
	}
	return r, fmt.Errorf("firecracker double printed no result: %s %s", out.String(), errb.String())
}

// fcDoubleMain is the double's process; it never returns.
func fcDoubleMain(spec string) {
	parts := strings.Split(spec, "|")
	var r fcDoubleResult
	slow := 0
	if len(parts) > 3 {
		slow, _ = strconv.Atoi(parts[3])
	}
	err := fcDouble(parts[0], parts[1], parts[2], slow, &r)
	if err != nil {
		r.Err = err.Error()
	}
	b, _ := json.Marshal(r)
	fmt.Printf("FCDOUBLE %s\n", b)
	switch {
	case err != nil:
		os.Exit(1)
	case r.Mismatches > 0:
		os.Exit(fcDoubleExitDiff)
	}
	os.Exit(0)
}

// fcDouble runs the double. With slow > 0 it pauses a millisecond every
// slow pages and reports its progress on stderr ("FCDOUBLE-PROGRESS n"),
// so that a test can act while it reads.
func fcDouble(socket, memPath, dialect string, slow int, r *fcDoubleResult) error {
	want, err := os.ReadFile(memPath)
	if err != nil {
		return err
	}
	size := len(want)
	guest, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("mmap guest memory: %w", err)
	}
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if errno != 0 {
		return fmt.Errorf("userfaultfd: %w", errno)
	}
	api := [3]uint64{uffdAPI, uffdFeatRemove, 0}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uffdioAPI, uintptr(unsafe.Pointer(&api))); errno != 0 {
		return fmt.Errorf("UFFDIO_API: %w", errno)
	}
	base := uintptr(unsafe.Pointer(&guest[0]))
	reg := [4]uint64{uint64(base), uint64(size), uffdModeMissing, 0}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uffdioRegister, uintptr(unsafe.Pointer(&reg))); errno != 0 {
		return fmt.Errorf("UFFDIO_REGISTER: %w", errno)
	}
	var body string
	switch dialect {
	case "1.1":
		body = fmt.Sprintf(`[{"base_host_virt_addr":%d,"size":%d,"offset":0}]`, base, size)
	case "1.10":
		body = fmt.Sprintf(`[{"base_host_virt_addr":%d,"size":%d,"offset":0,"page_size_kib":4096}]`, base, size)
	default:
		body = fmt.Sprintf(`[{"base_host_virt_addr":%d,"size":%d,"offset":0,"page_size":4096,"page_size_kib":4096}]`, base, size)
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return err
	}
	if _, _, err := c.WriteMsgUnix([]byte(body), unix.UnixRights(int(fd)), nil); err != nil {
		return fmt.Errorf("sendmsg: %w", err)
	}
	if dialect == "1.1" || dialect == "1.10" {
		c.Close() // before 1.12 Firecracker closes the socket after the handshake
	} else {
		defer c.Close()
	}
	// The daemon pre-installs the hot set; read everything (faults on the
	// rest are served on demand) with a deadline on the whole read.
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.First = -1
		for p := 0; p*4096 < size; p++ {
			if slow > 0 && p%slow == 0 {
				fmt.Fprintf(os.Stderr, "FCDOUBLE-PROGRESS %d\n", p)
				time.Sleep(time.Millisecond)
			}
			r.Pages++
			if !bytes.Equal(guest[p*4096:(p+1)*4096], want[p*4096:(p+1)*4096]) {
				if r.Mismatches == 0 {
					r.First = p
				}
				r.Mismatches++
			}
		}
	}()
	select {
	case <-done:
		return nil
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("reading guest memory hung after %d pages", r.Pages)
	}
}

// slowDouble is a double running in the background.
type slowDouble struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	mu   sync.Mutex
	read int
	prog chan struct{}
	done chan struct{}
}

// startFCDouble starts the double reading slowly (a pause every slow
// pages) against socket.
func startFCDouble(t *testing.T, ctx context.Context, socket, mem, dialect string, slow int) *slowDouble {
	t.Helper()
	d := &slowDouble{prog: make(chan struct{}, 1), done: make(chan struct{})}
	d.cmd = exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	d.cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%s|%s|%d", fcDoubleEnv, socket, mem, dialect, slow))
	d.cmd.Stdout = &d.out
	errp, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Kill() })
	go func() {
		defer close(d.done)
		sc := bufio.NewScanner(errp)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "FCDOUBLE-PROGRESS "); ok {
				n, _ := strconv.Atoi(rest)
				d.mu.Lock()
				d.read = n
				d.mu.Unlock()
				select {
				case d.prog <- struct{}{}:
				default:
				}
			} else {
				fmt.Fprintln(os.Stderr, sc.Text())
			}
		}
	}()
	return d
}

func (d *slowDouble) progress() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.read
}

// waitProgress waits until the double has read at least pages pages.
func (d *slowDouble) waitProgress(t *testing.T, pages int) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for d.progress() < pages {
		select {
		case <-d.prog:
		case <-d.done:
			t.Fatalf("the double stopped after %d pages", d.progress())
		case <-deadline:
			t.Fatalf("the double read only %d pages", d.progress())
		}
	}
}

// result waits for the double and returns what it read.
func (d *slowDouble) result(t *testing.T) fcDoubleResult {
	t.Helper()
	<-d.done
	d.cmd.Wait()
	var r fcDoubleResult
	for _, line := range strings.Split(d.out.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "FCDOUBLE "); ok {
			if err := json.Unmarshal([]byte(rest), &r); err != nil {
				t.Fatal(err)
			}
			return r
		}
	}
	t.Fatalf("the double printed no result: %s", d.out.String())
	return r
}
