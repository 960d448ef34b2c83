package vmmproc

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

const childEnv = "VMMPROC_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		if err := child(); err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type childInfo struct {
	A, B FileID
	Addr uintptr
}

// child is a stand-in VMM: two userfaultfds (A twice: a duplicate), one
// page registered on A. On "touch" it reads the page (blocking until a
// handler serves it) and prints the first byte; it exits at EOF.
func child() error {
	a, err := uffd.New()
	if err != nil {
		return err
	}
	if _, err := unix.Dup(a.Fd()); err != nil {
		return err
	}
	b, err := uffd.New()
	if err != nil {
		return err
	}
	if _, err := a.API(0); err != nil {
		return err
	}
	m, err := offheap.Anon(4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		return err
	}
	if _, err := a.Register(m.Addr(), 4096, uffd.RegisterModeMissing); err != nil {
		return err
	}
	ai, _ := FileIDOf(a.Fd())
	bi, _ := FileIDOf(b.Fd())
	js, _ := json.Marshal(childInfo{A: ai, B: bi, Addr: m.Addr()})
	fmt.Printf("INFO %s\n", js)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "touch" {
			v := m.B[0]
			fmt.Printf("GOT %02x\n", v)
		}
	}
	return nil
}

func startChild(t *testing.T) (*exec.Cmd, *bufio.Scanner, func(string), childInfo) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	sc := bufio.NewScanner(out)
	var info childInfo
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "INFO "); ok {
			if err := json.Unmarshal([]byte(rest), &info); err != nil {
				t.Fatal(err)
			}
			break
		}
		t.Fatalf("child: %s", sc.Text())
	}
	if info.A.Ino == 0 {
		t.Fatal("child printed no identities")
	}
	send := func(s string) {
		if s == "" {
			in.Close()
			return
		}
		fmt.Fprintln(in, s)
	}
	return cmd, sc, send, info
}

func identify(t *testing.T, pid int) Identity {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	id, err := Identify(pid, fd)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestTakeUFFD takes a stand-in VMM's userfaultfds back by inode (one of
// them duplicated, so two descriptors share it), serves a fault the VMM
// raises through the recovered one, and tells a wrong inode, a wrong start
// time, another boot and an exited process apart.
func TestTakeUFFD(t *testing.T) {
	cmd, out, send, info := startChild(t)
	id := identify(t, cmd.Process.Pid)
	if id.StartTime == 0 || id.BootID == "" {
		t.Fatalf("identity %+v", id)
	}
	p, err := Open(id)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	fds, err := p.UFFDs()
	if err != nil || len(fds) != 3 {
		t.Fatalf("child's userfaultfds: %v %v (want 3: A, its duplicate, B)", fds, err)
	}
	for _, want := range []FileID{info.A, info.B} {
		fd, err := p.TakeUFFD(want)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := FileIDOf(fd); got != want {
			t.Fatalf("took inode %d, want %d", got.Ino, want.Ino)
		}
		if want == info.B {
			unix.Close(fd)
		}
	}
	if _, err := p.TakeUFFD(FileID{Dev: info.A.Dev, Ino: 1}); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("unknown inode: %v", err)
	}

	// The recovered descriptor is the VMM's live userfaultfd: serve the
	// fault the child raises through it.
	fd, err := p.TakeUFFD(info.A)
	if err != nil {
		t.Fatal(err)
	}
	u := uffd.FromFd(fd)
	defer u.Close()
	if unread, waiting, err := Pending(fd); err != nil || unread != 0 || waiting != 0 {
		t.Fatalf("idle userfaultfd: unread %d unanswered %d %v", unread, waiting, err)
	}
	send("touch")
	buf := make([]byte, 64*uffd.MsgSize)
	var msgs []uffd.Msg
	deadline := time.Now().Add(10 * time.Second)
	for len(msgs) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no fault arrived on the recovered userfaultfd")
		}
		pf := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		unix.Poll(pf, 100)
		msgs, _ = u.ReadMsgs(buf, msgs[:0])
	}
	if unread, waiting, err := Pending(fd); err != nil || unread != 0 || waiting != 1 {
		t.Fatalf("a fault read and not answered: unread %d unanswered %d %v", unread, waiting, err)
	}
	if msgs[0].Event != uffd.EventPagefault || uintptr(msgs[0].Address)&^4095 != info.Addr {
		t.Fatalf("event %v", msgs[0].String())
	}
	src, _ := offheap.Anon(4096, unix.PROT_READ|unix.PROT_WRITE, 0)
	defer src.Unmap()
	for i := range src.B {
		src.B[i] = 0x5a
	}
	if _, err := u.Copy(info.Addr, src.Addr(), 4096, false); err != nil {
		t.Fatal(err)
	}
	if !out.Scan() || out.Text() != "GOT 5a" {
		t.Fatalf("child read %q after the fault was served", out.Text())
	}

	// Not the VMM: a reused pid (other start time), another boot.
	if _, err := Open(Identity{PID: id.PID, StartTime: id.StartTime + 1, BootID: id.BootID}); !errors.Is(err, ErrGone) {
		t.Fatalf("other start time: %v", err)
	}
	if _, err := Open(Identity{PID: id.PID, StartTime: id.StartTime, BootID: "another-boot"}); !errors.Is(err, ErrGone) {
		t.Fatalf("other boot: %v", err)
	}
	if p.Exited() {
		t.Fatal("live child reported exited")
	}
	send("")
	cmd.Wait()
	if !p.Exited() {
		t.Fatal("exited child not reported exited")
	}
	if _, err := Open(id); !errors.Is(err, ErrGone) {
		t.Fatalf("exited child: %v", err)
	}
	if _, err := p.TakeUFFD(info.A); !errors.Is(err, ErrGone) {
		t.Fatalf("taking from an exited child: %v", err)
	}
}

func TestParseStartTime(t *testing.T) {
	line := "4242 (fire) (cracker) S 1 4242 4242 0 -1 4194560 1402 0 0 0 10 3 0 0 20 0 9 0 123456789 1000 200 18446744073709551615"
	v, err := parseStartTime([]byte(line))
	if err != nil || v != 123456789 {
		t.Fatalf("got %d, %v", v, err)
	}
	for _, bad := range []string{"", "4242 fire S 1", "1 (x) S 1 2 3", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber 1"} {
		if _, err := parseStartTime([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseStartTime(f *testing.F) {
	f.Add([]byte("1 (a) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 1"))
	f.Add([]byte("1 ((()) S"))
	f.Fuzz(func(t *testing.T, b []byte) { parseStartTime(b) })
}
