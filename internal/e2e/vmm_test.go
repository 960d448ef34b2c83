package e2e

import (
	"bytes"
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
	"syscall"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

// nobody is the unprivileged uid the tests run other users' processes as.
const nobody = 65534

// asUser returns a command that runs argv as uid/gid nobody. With
// userfaultfd, it keeps CAP_SYS_PTRACE (ambient): the right to create a
// userfaultfd that vm.unprivileged_userfaultfd=0 otherwise reserves to
// root — what a jailer grants Firecracker (through /dev/userfaultfd).
func asUser(ctx context.Context, userfaultfd bool, argv ...string) *exec.Cmd {
	a := []string{fmt.Sprintf("--reuid=%d", nobody), fmt.Sprintf("--regid=%d", nobody), "--clear-groups"}
	if userfaultfd {
		a = append(a, "--inh-caps=+sys_ptrace", "--ambient-caps=+sys_ptrace")
	}
	return exec.CommandContext(ctx, "setpriv", append(a, argv...)...)
}

// needRoot skips a test that must act as several users.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: the test runs processes as other uids (setpriv)")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux) to run processes as other uids")
	}
}

// shared copies files into a fresh directory every user can read, and
// returns their new paths in order.
func shared(t *testing.T, files ...string) []string {
	t.Helper()
	dir, err := os.MkdirTemp("", "aquifer-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// intrude connects to a VM's socket as this process and sends a complete
// Firecracker handshake (a userfaultfd and a region list): what a process
// that wants the VM's memory would do. It returns what happened: the
// daemon must close the connection without answering or taking the fd.
func intrude(t *testing.T, sock string) error {
	t.Helper()
	u, err := uffd.New()
	if err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
	defer u.Close()
	body, _ := handshake.Marshal([]handshake.Region{{BaseHostVirtAddr: 0x10000, Size: 4096, Offset: 0, PageSize: 4096}}, handshake.DialectV1_12)
	c, err := handshake.SendRaw(sock, body, unix.UnixRights(u.Fd()))
	if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
		return nil // refused: closed before the message was even sent
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		return nil // refused: closed unread
	}
	return fmt.Errorf("the daemon kept an intruder's connection: read %d bytes, %v", n, err)
}

// vmmGuest is a guest emulator, the VMM, started before its restore is
// prepared (so that its pid can be named) and told the socket afterwards:
// a shell reads the path and execs the guest, which keeps the pid.
type vmmGuest struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   bytes.Buffer
	errb  bytes.Buffer
	ready string
}

func startVMM(t *testing.T, ctx context.Context, wrap func(argv ...string) *exec.Cmd, bin, mem, trace, ready string) *vmmGuest {
	t.Helper()
	g := &vmmGuest{ready: ready}
	g.cmd = wrap("/bin/sh", "-c", `read s; exec "$0" guest run --json --socket "$s" --mem "$1" --trace "$2" --wait-ready "$3" --vcpus 2`,
		bin, mem, trace, ready)
	g.cmd.Stdout, g.cmd.Stderr = &g.out, &g.errb
	var err error
	if g.in, err = g.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if g.cmd.ProcessState == nil {
			g.cmd.Process.Kill()
			g.cmd.Wait()
		}
	})
	return g
}

// restore tells the VMM its socket, waits for the daemon to report the hot
// set installed, resumes the VMM and checks its byte-for-byte report.
func (g *vmmGuest) restore(t *testing.T, ctx context.Context, pc *client.Client, id, sock string) {
	t.Helper()
	fmt.Fprintln(g.in, sock)
	exited := make(chan error, 1)
	go func() { exited <- g.cmd.Wait() }()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan error, 1)
	go func() { _, err := pc.WaitReady(wctx, id, time.Minute); ready <- err }()
	var err error
	select {
	case err = <-ready:
	case err = <-exited:
		t.Fatalf("VMM of %s exited before its VM was ready: %v\n%s", id, err, g.errb.String())
	}
	if err != nil {
		t.Fatalf("VM %s never got ready: %v\n%s", id, err, g.errb.String())
	}
	if err := os.WriteFile(g.ready, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err != nil {
		t.Fatalf("VMM of %s: %v\nstdout %s\nstderr %s", id, err, g.out.String(), g.errb.String())
	}
	var rep guestReport
	if err := json.Unmarshal(g.out.Bytes(), &rep); err != nil || rep.Mismatches != 0 || rep.Verified == 0 {
		t.Fatalf("VMM of %s: report %+v (%v): %s", id, rep, err, g.out.String())
	}
	// The daemon counts the restore once it has seen the VMM go, which
	// can come a moment after the process ended here (a loaded machine).
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		v, err := pc.Get(ctx, id)
		if err == nil && (v.State == api.StateExited || v.State == api.StateFailed) {
			if v.State == api.StateFailed {
				t.Fatalf("VM %s failed on the daemon after its VMM exited: %s", id, v.Error)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM %s: the daemon did not see its VMM exit within 30s (state %v, %v)", id, v, err)
		}
	}
}

// TestUFFDSocketBoundToVMM prepares restores that name their VMM — by pid
// (same uid as the daemon) and by uid (nobody, as under a jailer) — and has
// another process connect to each VM's socket first with a complete
// handshake: it is refused (closed unread) and counted, the socket keeps
// listening, and the real VMM then restores normally, every byte verified.
func TestUFFDSocketBoundToVMM(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	images := imagesDir(t, dir, img)
	// The VMM under a jailer runs as another uid: the socket directory is
	// searchable (not listable) by it.
	vms := filepath.Join(dir, "vms")
	os.Mkdir(vms, 0o711)
	os.Chmod(dir, 0o711)
	os.Chmod(filepath.Dir(dir), 0o711)
	sock, stop := startServe(t, ctx, dir, "--images", images)
	defer stop()
	pc := client.New(sock, client.Options{})
	files := shared(t, bin, f.mem, f.trace)
	sbin, mem, trace := files[0], files[1], files[2]
	readyDir := filepath.Dir(sbin)
	os.Chmod(readyDir, 0o777)

	t.Run("pid", func(t *testing.T) {
		g := startVMM(t, ctx, func(argv ...string) *exec.Cmd { return exec.CommandContext(ctx, argv[0], argv[1:]...) },
			sbin, mem, trace, filepath.Join(readyDir, "ready-pid"))
		vm, err := pc.Prepare(ctx, "vm-pid", api.PrepareRequest{Snapshot: "fn", VMMPID: g.cmd.Process.Pid})
		if err != nil {
			t.Fatal(err)
		}
		if vm.VMMPID != g.cmd.Process.Pid || vm.VMMUID != 0 {
			t.Fatalf("VM admits %d/%d, want pid %d uid 0", vm.VMMUID, vm.VMMPID, g.cmd.Process.Pid)
		}
		// Same uid as the daemon and the VMM, another pid: refused.
		if err := intrude(t, vm.Socket); err != nil {
			t.Fatal(err)
		}
		if v, _ := pc.Get(ctx, "vm-pid"); v.State != api.StateWaiting {
			t.Fatalf("after the intruder the VM is %s (%s), want waiting", v.State, v.Error)
		}
		g.restore(t, ctx, pc, "vm-pid", vm.Socket)
	})
	t.Run("uid", func(t *testing.T) {
		uid := nobody
		g := startVMM(t, ctx, func(argv ...string) *exec.Cmd { return asUser(ctx, true, argv...) },
			sbin, mem, trace, filepath.Join(readyDir, "ready-uid"))
		vm, err := pc.Prepare(ctx, "vm-uid", api.PrepareRequest{Snapshot: "fn", VMMUID: &uid})
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(vm.Socket)
		if err != nil || st.Sys().(*syscall.Stat_t).Uid != nobody || st.Mode().Perm() != 0o600 {
			t.Fatalf("socket %s: %v %v, want mode 0600 owned by the VMM's uid %d", vm.Socket, st.Mode(), err, nobody)
		}
		// Root (the daemon's own uid) is not the VMM: refused.
		if err := intrude(t, vm.Socket); err != nil {
			t.Fatal(err)
		}
		g.restore(t, ctx, pc, "vm-uid", vm.Socket)
	})
	m, err := pc.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := metric(t, m, "aquifer_uffd_refused_peers_total"); n != 2 {
		t.Fatalf("aquifer_uffd_refused_peers_total = %v, want 2", n)
	}
	if n := metric(t, m, `aquifer_restores_total{outcome="ok"}`); n != 2 {
		t.Fatalf("aquifer_restores_total ok = %v, want 2", n)
	}
	// A VMM that is not running, or a uid that is not one, is refused at
	// PUT.
	if _, err := pc.Prepare(ctx, "x", api.PrepareRequest{Snapshot: "fn", VMMPID: 1 << 30}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("vmm_pid of no process: %v", err)
	}
	bad := -1
	if _, err := pc.Prepare(ctx, "y", api.PrepareRequest{Snapshot: "fn", VMMUID: &bad}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("vmm_uid -1: %v", err)
	}
}

// imagesDir makes dir/images holding img as fn.img (for serve --images).
func imagesDir(t *testing.T, dir, img string) string {
	t.Helper()
	images := filepath.Join(dir, "images")
	os.MkdirAll(images, 0o700)
	if err := os.Link(img, filepath.Join(images, "fn.img")); err != nil {
		t.Fatal(err)
	}
	return images
}

// startHandle runs `aquifer handle --socket sock --mem mem`.
func startHandle(t *testing.T, ctx context.Context, sock, mem string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	h := exec.CommandContext(ctx, bin, "handle", "--socket", sock, "--mem", mem)
	var out bytes.Buffer
	h.Stdout, h.Stderr = &out, &out
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if h.ProcessState == nil {
			h.Process.Kill()
			h.Wait()
		}
	})
	return h, &out
}

// TestDaemonsIsolated: a second daemon on a socket directory another one
// uses refuses to start at once, naming the first one's pid, and the first
// one's waiting VM then restores normally; a second handler on a live
// handler's socket refuses and leaves it working; a dead handler's stale
// socket is replaced by the next handler.
func TestDaemonsIsolated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, img := poolFixture(t, ctx)
	dir := t.TempDir()
	images := imagesDir(t, dir, img)
	a := exec.CommandContext(ctx, bin, "serve", "--images", images, "--api", filepath.Join(dir, "a.sock"),
		"--socket-dir", filepath.Join(dir, "vms"), "--log-level", "warn")
	a.Stderr = os.Stderr
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { a.Process.Signal(os.Interrupt); a.Wait() }()
	waitSocket(t, filepath.Join(dir, "a.sock"))
	pc := client.New(filepath.Join(dir, "a.sock"), client.Options{})
	vm, err := pc.Prepare(ctx, "vm-a", api.PrepareRequest{Snapshot: "fn"})
	if err != nil {
		t.Fatal(err)
	}

	// The default socket directory is vms/ beside --api: a second daemon
	// with its API beside the first one's lands on the same directory.
	out, err := exec.CommandContext(ctx, bin, "serve", "--images", images, "--api", filepath.Join(dir, "b.sock"),
		"--log-level", "warn").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "used by another daemon") || !strings.Contains(string(out), fmt.Sprintf("pid %d ", a.Process.Pid)) {
		t.Fatalf("second daemon on the same socket directory: %v: %s", err, out)
	}
	t.Logf("second daemon: %s", strings.TrimSpace(string(out)))
	rep := runGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", vm.Socket)
	if rep.Mismatches != 0 || rep.Verified == 0 {
		t.Fatalf("first daemon's VM after the second daemon's attempt: %+v", rep)
	}

	// Handlers: one live, one refused, the live one unharmed.
	sock := filepath.Join(dir, "h.sock")
	h1, _ := startHandle(t, ctx, sock, f.mem)
	waitSocket(t, sock)
	h2, out2 := startHandle(t, ctx, sock, f.mem)
	if err := h2.Wait(); err == nil || !strings.Contains(out2.String(), "another handler is listening on "+sock) ||
		!strings.Contains(out2.String(), fmt.Sprintf("pid %d ", h1.Process.Pid)) {
		t.Fatalf("second handler on a live socket: %v: %s", err, out2)
	}
	if rep := runGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", sock); rep.Mismatches != 0 || rep.Verified == 0 {
		t.Fatalf("live handler after the refused one: %+v", rep)
	}
	if err := h1.Wait(); err != nil {
		t.Fatal(err)
	}

	// A handler that died leaves its socket file: the next one replaces it
	// (the dead one's lock is gone) and serves.
	h3, _ := startHandle(t, ctx, sock, f.mem)
	waitSocket(t, sock)
	h3.Process.Kill()
	h3.Wait()
	stale, err := os.Lstat(sock)
	if err != nil || stale.Mode()&os.ModeSocket == 0 {
		t.Fatalf("a killed handler left no stale socket to test with: %v", err)
	}
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		t.Fatal("the stale socket accepts connections")
	}
	h4, out4 := startHandle(t, ctx, sock, f.mem)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		// The new handler's socket replaced the stale one (the inode
		// number may be reused: compare the change times too).
		if st, err := os.Lstat(sock); err == nil && (!os.SameFile(st, stale) ||
			st.Sys().(*syscall.Stat_t).Ctim != stale.Sys().(*syscall.Stat_t).Ctim) {
			break
		}
		if time.Now().After(deadline) || h4.ProcessState != nil {
			t.Fatalf("the stale socket was not replaced: %s", out4)
		}
	}
	if rep := runGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--socket", sock); rep.Mismatches != 0 || rep.Verified == 0 {
		t.Fatalf("handler on a stale socket: %+v", rep)
	}
	if err := h4.Wait(); err != nil {
		t.Fatalf("handler on a stale socket: %v: %s", err, out4)
	}
}
