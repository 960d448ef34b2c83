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

// vmConfig describes one QEMU run.
type vmConfig struct {
	guest   *Guest
	fn      string
	memMiB  int
	memPath string // RAM file under /dev/shm
	workDir string // sockets, logs
	// incoming, when set, restores device state from this file (paused).
	incoming string
	// plugin, when set, is "path.so,arg=..,..".
	plugin string
}

// cmdline is the guest kernel command line. init_on_free=1 zeroes freed
// pages as FaaSnap's patched guest kernel did; see docs/corpus.md.
func cmdline(fn string) string {
	return "console=ttyS0 reboot=k panic=1 quiet init_on_free=1 aq.fn=" + fn
}

type vm struct {
	cmd     *exec.Cmd
	q       *qmp
	stdin   io.WriteCloser
	lines   chan string
	died    chan struct{}
	mu      sync.Mutex
	tail    []string
	waitErr error
}

func startVM(ctx context.Context, c vmConfig) (*vm, error) {
	sock := filepath.Join(c.workDir, "qmp.sock")
	os.Remove(sock)
	mem := fmt.Sprintf("%dM", c.memMiB)
	args := []string{
		"-accel", "tcg", "-M", "pc", "-cpu", "max", "-smp", "1", "-m", mem,
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none",
		"-qmp", "unix:" + sock + ",server=on,wait=off",
		"-object", "memory-backend-file,id=mem,size=" + mem + ",mem-path=" + c.memPath + ",share=on",
		"-machine", "memory-backend=mem",
		"-kernel", c.guest.Kernel, "-initrd", c.guest.Initrd, "-append", cmdline(c.fn),
		"-drive", "file=" + c.guest.RootImg + ",format=raw,if=none,id=d0,readonly=on",
		"-device", "virtio-blk-pci,drive=d0",
	}
	if c.incoming != "" {
		args = append(args, "-S", "-incoming", "defer")
	}
	if c.plugin != "" {
		args = append(args, "-plugin", c.plugin)
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout // QEMU's own errors go into the same log tail
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("corpus: starting qemu: %w", err)
	}
	v := &vm{cmd: cmd, stdin: stdin, lines: make(chan string, 1024), died: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := strings.TrimRight(sc.Text(), "\r")
			v.mu.Lock()
			v.tail = append(v.tail, l)
			if len(v.tail) > 40 {
				v.tail = v.tail[1:]
			}
			v.mu.Unlock()
			if strings.HasPrefix(l, "AQ-") {
				v.lines <- l
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
		v.kill()
		return nil, fmt.Errorf("corpus: %w; console: %s", err, v.log())
	}
	if c.incoming != "" {
		caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
		if _, err := v.q.exec("migrate-set-capabilities", caps); err != nil {
			v.kill()
			return nil, err
		}
		if _, err := v.q.exec("migrate-incoming", map[string]any{"uri": "exec:cat " + shellQuote(c.incoming)}); err != nil {
			v.kill()
			return nil, err
		}
		if err := v.waitStatus(ctx, func(s string) bool { return s != "inmigrate" }); err != nil {
			v.kill()
			return nil, fmt.Errorf("corpus: restoring device state: %w", err)
		}
	}
	return v, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// log returns the last console lines, for error messages.
func (v *vm) log() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return strings.Join(v.tail, " | ")
}

// waitMarker waits for a console line starting with prefix.
func (v *vm) waitMarker(ctx context.Context, prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l := <-v.lines:
			if strings.HasPrefix(l, "AQ-FATAL") {
				return "", fmt.Errorf("corpus: guest: %s", l)
			}
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		case <-v.died:
			return "", fmt.Errorf("corpus: qemu exited (%v) waiting for %s; console: %s", v.waitErr, prefix, v.log())
		case <-t.C:
			return "", fmt.Errorf("corpus: no %s from the guest within %v; console: %s", prefix, timeout, v.log())
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

func (v *vm) send(line string) error {
	_, err := io.WriteString(v.stdin, line+"\n")
	return err
}

func (v *vm) waitStatus(ctx context.Context, ok func(string) bool) error {
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
func (v *vm) saveState(ctx context.Context, path string) error {
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
			return fmt.Errorf("corpus: saving device state: migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return errors.New("corpus: saving device state timed out")
}

func (v *vm) stop() error {
	_, err := v.q.exec("stop", nil)
	return err
}

func (v *vm) cont() error {
	_, err := v.q.exec("cont", nil)
	return err
}

// quit asks QEMU to exit and waits; it kills QEMU if it does not.
func (v *vm) quit() {
	if v.q != nil {
		v.q.exec("quit", nil)
		v.q.close()
	}
	select {
	case <-v.died:
	case <-time.After(10 * time.Second):
		v.kill()
	}
	v.stdin.Close()
}

func (v *vm) kill() {
	if v.cmd.Process != nil {
		v.cmd.Process.Kill()
	}
	<-v.died
	if v.q != nil {
		v.q.close()
	}
}
