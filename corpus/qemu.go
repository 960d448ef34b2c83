package corpus

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// qmp is a minimal client of QEMU's machine protocol: line-delimited JSON
// over a Unix socket, one command at a time. (A full QMP library would pull
// in libvirt bindings for the five commands used here.)
type qmp struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialQMP(ctx context.Context, path string, died <-chan struct{}) (*qmp, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			q := &qmp{conn: c, r: bufio.NewReader(c)}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
				c.Close()
				return nil, fmt.Errorf("qmp greeting: %w", err)
			}
			if _, err := q.exec("qmp_capabilities", nil); err != nil {
				c.Close()
				return nil, err
			}
			return q, nil
		}
		select {
		case <-died:
			return nil, errors.New("qemu exited before its QMP socket came up")
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("qmp socket %s: %w", path, err)
		}
	}
}

// exec runs one command and returns its "return" value.
func (q *qmp) exec(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	q.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class, Desc string
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: bad reply %q: %w", cmd, line, err)
		}
		if resp.Event != "" {
			continue
		}
		if resp.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		}
		return resp.Return, nil
	}
}

func (q *qmp) close() { q.conn.Close() }

// VMConfig describes one QEMU run of a corpus guest.
type VMConfig struct {
	Guest  *Guest
	Fn     string
	MemMiB int
	// MemPath is the RAM file under /dev/shm (a shared memory-backend-file).
	MemPath string
	// MemBackend, when set, replaces that backend: the whole -object value
	// (it must keep id=mem, the RAM block name the device state refers to).
	MemBackend string
	// WorkDir holds the QMP socket.
	WorkDir string
	// Incoming, when set, restores device state from this file (paused).
	Incoming string
	// RestoreLater starts QEMU waiting for Incoming (-incoming defer) but
	// leaves loading it to the caller's VM.Restore.
	RestoreLater bool
	// Plugin, when set, is "path.so,arg=..,..".
	Plugin string
	// Env is added to QEMU's environment (e.g. LD_PRELOAD of a shim).
	Env []string
	// NoReboot makes a guest reboot (a kernel panic: panic=1) exit QEMU
	// instead of booting the kernel again.
	NoReboot bool
	// Stderr, when set, receives QEMU's standard error (else it joins the
	// console tail).
	Stderr io.Writer
}

// cmdline is the guest kernel command line. init_on_free=1 zeroes freed
// pages as FaaSnap's patched guest kernel did; see docs/corpus.md.
func cmdline(fn string) string {
	return "console=ttyS0 reboot=k panic=1 quiet init_on_free=1 aq.fn=" + fn
}

// Line is one marker line ("AQ-...") of the guest console and when the
// host read it.
type Line struct {
	Text string
	At   time.Time
}

// VM is a running QEMU.
type VM struct {
	cmd     *exec.Cmd
	q       *qmp
	stdin   io.WriteCloser
	lines   chan Line
	died    chan struct{}
	mu      sync.Mutex
	tail    []string
	waitErr error
}

// QEMUArgs is the command line of a corpus guest; restores must use the
// same machine and devices as the capture (the device state depends on them).
func QEMUArgs(c VMConfig, qmpSock string) []string {
	mem := fmt.Sprintf("%dM", c.MemMiB)
	backend := c.MemBackend
	if backend == "" {
		backend = "memory-backend-file,id=mem,size=" + mem + ",mem-path=" + c.MemPath + ",share=on"
	}
	args := []string{
		"-accel", "tcg", "-M", "pc", "-cpu", "max", "-smp", "1", "-m", mem,
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none",
		"-qmp", "unix:" + qmpSock + ",server=on,wait=off",
		"-object", backend,
		"-machine", "memory-backend=mem",
		"-kernel", c.Guest.Kernel, "-initrd", c.Guest.Initrd, "-append", cmdline(c.Fn),
		"-drive", "file=" + c.Guest.RootImg + ",format=raw,if=none,id=d0,readonly=on",
		"-device", "virtio-blk-pci,drive=d0",
		"-device", "virtio-balloon-pci,id=balloon0",
	}
	if c.Incoming != "" {
		args = append(args, "-S", "-incoming", "defer")
	}
	if c.NoReboot {
		args = append(args, "-no-reboot")
	}
	if c.Plugin != "" {
		args = append(args, "-plugin", c.Plugin)
	}
	return args
}

// StartVM starts QEMU, connects to its QMP socket and, with Incoming,
// restores the device state (the VM stays paused). On error nothing is
// left running.
func StartVM(ctx context.Context, c VMConfig) (*VM, error) {
	sock := filepath.Join(c.WorkDir, "qmp.sock")
	os.Remove(sock)
	cmd := exec.Command("qemu-system-x86_64", QEMUArgs(c, sock)...)
	cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout // QEMU's own errors go into the same log tail
	if c.Stderr != nil {
		cmd.Stderr = c.Stderr
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting qemu: %w", err)
	}
	v := &VM{cmd: cmd, stdin: stdin, lines: make(chan Line, 1024), died: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := strings.TrimRight(sc.Text(), "\r")
			at := time.Now()
			v.mu.Lock()
			v.tail = append(v.tail, l)
			if len(v.tail) > 40 {
				v.tail = v.tail[1:]
			}
			v.mu.Unlock()
			if i := strings.Index(l, "AQ-"); i >= 0 {
				select {
				case v.lines <- Line{Text: l[i:], At: at}:
				default: // nobody reads: keep the tail only
				}
			}
		}
		err := cmd.Wait()
		v.mu.Lock()
		v.waitErr = err
		v.mu.Unlock()
		close(v.died)
	}()
	v.q, err = dialQMP(ctx, sock, v.died)
	if err != nil {
		v.Kill()
		return nil, fmt.Errorf("%w; console: %s", err, v.Log())
	}
	if c.Incoming != "" && !c.RestoreLater {
		if err := v.Restore(ctx, c.Incoming); err != nil {
			v.Kill()
			return nil, err
		}
	}
	return v, nil
}

// Restore loads device state saved with x-ignore-shared (RAM comes from
// the memory backend) into a QEMU started with -incoming defer, and waits
// until the load is over (the VM stays paused).
func (v *VM) Restore(ctx context.Context, state string) error {
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
	if _, err := v.q.exec("migrate-set-capabilities", caps); err != nil {
		return err
	}
	if _, err := v.q.exec("migrate-incoming", map[string]any{"uri": "exec:cat " + shellQuote(state)}); err != nil {
		return err
	}
	if err := v.waitStatus(ctx, func(s string) bool { return s != "inmigrate" }); err != nil {
		return fmt.Errorf("restoring device state: %w; console: %s", err, v.Log())
	}
	return nil
}

// Pid is QEMU's process id.
func (v *VM) Pid() int { return v.cmd.Process.Pid }

// Exited is closed when QEMU has exited.
func (v *VM) Exited() <-chan struct{} { return v.died }

// QMP runs one machine-protocol command and returns its "return" value.
func (v *VM) QMP(cmd string, args any) (json.RawMessage, error) { return v.q.exec(cmd, args) }

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Log returns the last console lines, for error messages.
func (v *VM) Log() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return strings.Join(v.tail, " | ")
}

// waitMarker waits for a console line starting with prefix.
func (v *VM) waitMarker(ctx context.Context, prefix string, timeout time.Duration) (string, error) {
	l, err := v.WaitMarker(ctx, prefix, timeout)
	return l.Text, err
}

// WaitMarker waits for a console marker line starting with prefix and
// returns it with its arrival time. AQ-FATAL from the guest, QEMU exiting
// (a guest crash with NoReboot), the timeout or ctx end it with an error.
func (v *VM) WaitMarker(ctx context.Context, prefix string, timeout time.Duration) (Line, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l := <-v.lines:
			if strings.HasPrefix(l.Text, "AQ-FATAL") {
				return l, &GuestFatal{Text: strings.TrimSpace(strings.TrimPrefix(l.Text, "AQ-FATAL"))}
			}
			if strings.HasPrefix(l.Text, prefix) {
				return l, nil
			}
		case <-v.died:
			v.mu.Lock()
			err := v.waitErr
			v.mu.Unlock()
			return Line{}, fmt.Errorf("qemu exited (%v) waiting for %s; console: %s", err, prefix, v.Log())
		case <-t.C:
			return Line{}, fmt.Errorf("no %s from the guest within %v; console: %s", prefix, timeout, v.Log())
		case <-ctx.Done():
			return Line{}, ctx.Err()
		}
	}
}

// GuestFatal is the runner's AQ-FATAL report (corpus/guest/runner.py): the
// function's init() or handle() raised, or its module did not load.
type GuestFatal struct {
	// Text is the report after "AQ-FATAL ": a message and the traceback,
	// its lines joined by " | " (the console protocol is line-based).
	Text string
}

func (e *GuestFatal) Error() string { return "the guest failed: AQ-FATAL " + e.Text }

// Traceback returns the report with its lines restored.
func (e *GuestFatal) Traceback() string {
	t := strings.TrimSuffix(strings.TrimSpace(e.Text), " |")
	return strings.TrimRight(strings.ReplaceAll(t, " | ", "\n"), "\n ")
}

// Send writes one line to the guest's serial console.
func (v *VM) Send(line string) error {
	_, err := io.WriteString(v.stdin, line+"\n")
	return err
}

func (v *VM) waitStatus(ctx context.Context, ok func(string) bool) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		r, err := v.q.exec("query-status", nil)
		if err != nil {
			return err
		}
		var st struct{ Status string }
		json.Unmarshal(r, &st)
		if ok(st.Status) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return errors.New("timed out waiting for the VM run state")
}

// saveState pauses the VM (if running) and writes its device state, without
// RAM (x-ignore-shared), to path.
func (v *VM) saveState(ctx context.Context, path string) error {
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
	if _, err := v.q.exec("migrate-set-capabilities", caps); err != nil {
		return err
	}
	if _, err := v.q.exec("migrate", map[string]any{"uri": "exec:cat > " + shellQuote(path)}); err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		r, err := v.q.exec("query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string
			ErrorDesc string `json:"error-desc"`
		}
		json.Unmarshal(r, &st)
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("saving device state: migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return errors.New("saving device state timed out")
}

// Stop pauses the vCPUs.
func (v *VM) Stop() error {
	_, err := v.q.exec("stop", nil)
	return err
}

// Cont resumes the vCPUs.
func (v *VM) Cont() error {
	_, err := v.q.exec("cont", nil)
	return err
}

// Quit asks QEMU to exit and waits; it kills QEMU if it does not.
func (v *VM) Quit() {
	if v.q != nil {
		v.q.exec("quit", nil)
		v.q.close()
	}
	select {
	case <-v.died:
	case <-time.After(10 * time.Second):
		v.Kill()
	}
	v.stdin.Close()
}

// Kill ends QEMU at once and waits for it.
func (v *VM) Kill() {
	if v.cmd.Process != nil {
		v.cmd.Process.Kill()
	}
	<-v.died
	if v.q != nil {
		v.q.close()
	}
}

// Invocation is the runner's answer to one AQ-INVOKE (protocol in
// corpus/guest/runner.py).
type Invocation struct {
	Input string
	// Started is when AQ-START arrived: the guest's first output after
	// the invocation was sent; Done when AQ-DONE arrived.
	Started, Done time.Time
	// GuestNs is handle()'s duration measured inside the guest.
	GuestNs int64
	// Digest is the runner's digest of the result; Output its text
	// (ascii(), truncated to 200 characters).
	Digest, Output string
}

// WaitInvocation reads the runner's answer to AQ-INVOKE input.
func WaitInvocation(ctx context.Context, v *VM, input string, timeout time.Duration) (*Invocation, error) {
	deadline := time.Now().Add(timeout)
	inv := &Invocation{Input: input}
	l, err := v.WaitMarker(ctx, "AQ-START "+input, timeout)
	if err != nil {
		return nil, err
	}
	inv.Started = l.At
	if l, err = v.WaitMarker(ctx, "AQ-OUT "+input+" ", time.Until(deadline)); err != nil {
		return nil, err
	}
	inv.Output = strings.TrimPrefix(l.Text, "AQ-OUT "+input+" ")
	if l, err = v.WaitMarker(ctx, "AQ-DONE "+input+" ", time.Until(deadline)); err != nil {
		return nil, err
	}
	inv.Done = l.At
	f := strings.Fields(l.Text)
	if len(f) != 4 {
		return nil, fmt.Errorf("malformed runner line %q", l.Text)
	}
	if inv.GuestNs, err = strconv.ParseInt(f[2], 10, 64); err != nil {
		return nil, fmt.Errorf("malformed runner line %q: %w", l.Text, err)
	}
	inv.Digest = f[3]
	return inv, nil
}
