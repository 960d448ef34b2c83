package testvm

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/uffd"
)

// childEnv carries a child VMM's configuration from StartChild.
const childEnv = "AQUIFER_TESTVM_CHILD"

type childConfig struct {
	Options
	Socket  string            `json:"socket"`
	Dialect handshake.Dialect `json:"dialect"`
}

// MaybeChild turns this process into a VMM child when StartChild started
// it, and then never returns; otherwise it returns at once. Call it first in
// the TestMain of a package whose tests use StartChild.
func MaybeChild() {
	s, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	if err := runChild(s, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "testvm child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runChild maps the memory, sends the handshake, says "ready" and then
// obeys one command a line: "touch P", "utouch P" (from user mode) and
// "write P V" fault page P in (each on its own goroutine, so several can
// wait at once) and answer "page P HEX" with the page's bytes as the VM
// sees them, or "error P MESSAGE"; "exit" (or the end of input) ends the
// process.
func runChild(conf string, in io.Reader, out io.Writer) error {
	var c childConfig
	if err := json.Unmarshal([]byte(conf), &c); err != nil {
		return err
	}
	v, err := Start(c.Options)
	if err != nil {
		return err
	}
	conn, err := v.Send(c.Socket, c.Dialect)
	if err != nil {
		return err
	}
	if !c.Dialect.KeepsSocketOpen() {
		conn.Close()
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(out, format+"\n", args...)
		mu.Unlock()
	}
	say("ready")
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if f[0] == "exit" {
			return nil
		}
		if len(f) < 2 {
			return fmt.Errorf("bad command %q", sc.Text())
		}
		p, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil || p >= v.Pages() {
			return fmt.Errorf("bad page in %q", sc.Text())
		}
		var val uint64
		if f[0] == "write" && len(f) == 3 {
			if val, err = strconv.ParseUint(f[2], 10, 64); err != nil {
				return fmt.Errorf("bad value in %q", sc.Text())
			}
		} else if f[0] != "touch" && f[0] != "utouch" {
			return fmt.Errorf("bad command %q", sc.Text())
		}
		cmd := f[0]
		go func() {
			var err error
			switch cmd {
			case "write":
				err = v.Write(p, val)
			case "utouch":
				v.UserTouch(p)
			default:
				err = v.Touch(p)
			}
			if err != nil {
				say("error %d %v", p, err)
				return
			}
			say("page %d %s", p, hex.EncodeToString(v.Bytes(p)))
		}()
	}
	return sc.Err()
}

// Child is a VMM in a child process (the test binary run again): its own
// mm, pid and exit, as Firecracker has. Its memory and userfaultfd are
// set up as New does and sent to the socket at start.
type Child struct {
	Cmd *exec.Cmd
	in  io.WriteCloser

	mu      sync.Mutex
	waiters map[uint64][]chan Touched
	reading bool
	done    chan struct{} // closed when the child's output ended
	stderr  strings.Builder
}

// Touched is a child's answer to a touch: the page as the VM sees it.
type Touched struct {
	Page []byte
	Err  error
}

// AcceptChild starts a VMM child (StartChild) on a socket of its own and
// accepts its handshake as a daemon does: it returns the child, the
// accepted VM (its watch descriptors) and its userfaultfd, which are closed
// when the test ends.
func AcceptChild(tb testing.TB, o Options, d handshake.Dialect) (*Child, *handshake.VM, *uffd.FD) {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "vm.sock")
	l, err := handshake.Listen(sock)
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	c := StartChild(tb, sock, o, d)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm, err := handshake.Accept(ctx, l, handshake.AcceptOptions{MemSize: int64(o.Size), UID: -1}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(vm.Close)
	u := uffd.FromFd(vm.UFFD)
	vm.UFFD = -1
	tb.Cleanup(func() { u.Close() })
	return c, vm, u
}

// StartChild starts a VMM child that maps memory per o and sends its
// handshake in dialect d to socket (which must be listening). It returns
// once the handshake is sent. The child is killed when the test ends.
func StartChild(tb testing.TB, socket string, o Options, d handshake.Dialect) *Child {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	conf, _ := json.Marshal(childConfig{Options: o, Socket: socket, Dialect: d})
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(conf))
	c := &Child{Cmd: cmd, waiters: map[uint64][]chan Touched{}, done: make(chan struct{})}
	cmd.Stderr = &c.stderr
	if c.in, err = cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Kill)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 4*PageSize), 4*PageSize)
	if !sc.Scan() || sc.Text() != "ready" {
		c.Kill()
		tb.Fatalf("testvm child did not start (did TestMain call testvm.MaybeChild?): %q %v; stderr: %s", sc.Text(), sc.Err(), c.stderr.String())
	}
	c.reading = true
	go c.read(sc)
	return c
}

func (c *Child) read(sc *bufio.Scanner) {
	defer close(c.done)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		if len(f) != 3 {
			continue
		}
		p, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		var t Touched
		if f[0] == "page" {
			t.Page, t.Err = hex.DecodeString(f[2])
		} else {
			t.Err = fmt.Errorf("testvm child: %s", f[2])
		}
		c.mu.Lock()
		if w := c.waiters[p]; len(w) > 0 {
			w[0] <- t
			c.waiters[p] = w[1:]
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	for p, ws := range c.waiters {
		for _, w := range ws {
			w <- Touched{Err: fmt.Errorf("testvm child exited before page %d was served", p)}
		}
	}
	c.waiters = map[uint64][]chan Touched{}
	c.mu.Unlock()
}

func (c *Child) command(p uint64, line string) <-chan Touched {
	ch := make(chan Touched, 1)
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		ch <- Touched{Err: fmt.Errorf("testvm child has exited")}
		return ch
	default:
	}
	c.waiters[p] = append(c.waiters[p], ch)
	c.mu.Unlock()
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		ch <- Touched{Err: err}
	}
	return ch
}

// Touch asks the child to read-fault page p (as VM.Touch); the channel
// yields the page once the child's toucher is woken.
func (c *Child) Touch(p uint64) <-chan Touched { return c.command(p, fmt.Sprintf("touch %d", p)) }

// UserTouch asks the child to fault page p from user mode (VM.UserTouch).
func (c *Child) UserTouch(p uint64) <-chan Touched { return c.command(p, fmt.Sprintf("utouch %d", p)) }

// Write asks the child to write-fault page p, storing val in its first word.
func (c *Child) Write(p, val uint64) <-chan Touched {
	return c.command(p, fmt.Sprintf("write %d %d", p, val))
}

// Pid is the child's pid.
func (c *Child) Pid() int { return c.Cmd.Process.Pid }

// Kill kills the child (SIGKILL: no chance to clean up, as a crashing VMM)
// and reaps it. It is idempotent.
func (c *Child) Kill() {
	if c.Cmd.ProcessState == nil {
		c.Cmd.Process.Signal(syscall.SIGKILL)
		c.wait()
	}
}

// Exit asks the child to exit normally and reaps it.
func (c *Child) Exit() error {
	io.WriteString(c.in, "exit\n")
	c.in.Close()
	return c.wait()
}

// wait reaps the child once its output is read to the end (Wait closes
// the pipe).
func (c *Child) wait() error {
	if c.reading {
		<-c.done
	}
	return c.Cmd.Wait()
}
