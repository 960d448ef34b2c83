package pagerd_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/internal/testsnap"
	"github.com/aquifer-pool/aquifer/internal/testvm"
	"github.com/aquifer-pool/aquifer/pagerd"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	testvm.MaybeChild()
	os.Exit(m.Run())
}

const (
	ps    = testvm.PageSize
	pages = 64
)

// images writes snapshot "snap" (64 pages, 16 touched) into a directory of
// images and returns the directory and the snapshot's memory.
func images(t *testing.T) (string, []byte) {
	t.Helper()
	dir := t.TempDir()
	memPath := filepath.Join(t.TempDir(), "mem")
	if _, err := testsnap.Write(memPath, testsnap.Spec{Size: pages * ps, ZeroFrac: 0.5, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	tr := testsnap.Trace(testsnap.TraceSpec{MemSize: pages * ps, Accesses: 40, Pages: 16, Seed: 4})
	if _, err := snapimage.Convert(memPath, filepath.Join(dir, "snap.img"), snapimage.ConvertOptions{Trace: tr, ExtentPages: 4}); err != nil {
		t.Fatal(err)
	}
	mem, err := os.ReadFile(memPath)
	if err != nil {
		t.Fatal(err)
	}
	return dir, mem
}

// opener serves a directory of images; snapshot "down" is unavailable and
// snapshot "slow" never opens (until the caller's deadline).
type opener struct{ restore.Dir }

func (o *opener) Open(ctx context.Context, name string) (*restore.Snapshot, error) {
	switch name {
	case "down":
		return nil, fmt.Errorf("snapshot %q: the pool's memory nodes do not answer: %w", name, restore.ErrUnavailable)
	case "slow":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return o.Dir.Open(ctx, name)
}

type daemon struct {
	d      *pagerd.Daemon
	c      *client.Client
	api    string
	vmDir  string
	cancel context.CancelFunc
}

// start runs a daemon serving the images in dir on a real Unix socket,
// admitting VMMs of its own uid.
func start(t *testing.T, dir string) *daemon { return startAs(t, dir, -1) }

// startAs is start for VMMs running as vmmUID.
func startAs(t *testing.T, dir string, vmmUID int) *daemon {
	t.Helper()
	base := t.TempDir()
	x := &daemon{api: filepath.Join(base, "api.sock"), vmDir: filepath.Join(base, "vms")}
	d, err := pagerd.New(pagerd.Config{Opener: &opener{restore.Dir{Path: dir}}, SocketDir: x.vmDir, VMMUID: vmmUID,
		AcceptTimeout: 30 * time.Second, OpenTimeout: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	x.d = d
	ctx, cancel := context.WithCancel(context.Background())
	x.cancel = cancel
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx, x.api) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		d.Close()
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := os.Stat(x.api); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the API socket never appeared")
		}
		time.Sleep(time.Millisecond)
	}
	x.c = client.New(x.api, client.Options{Timeout: 20 * time.Second})
	return x
}

// raw sends a request the client would never send and decodes the error.
func (x *daemon) raw(t *testing.T, method, path, body string) (int, *api.Error) {
	t.Helper()
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", x.api)
	}}}
	req, err := http.NewRequest(method, "http://aquifer"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.Error
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		if err := json.Unmarshal(b, &e); err != nil || e.Message == "" {
			t.Fatalf("%s %s: HTTP %d with body %q: not an API error", method, path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, &e
}

// status returns the HTTP status of a client error.
func status(err error) int {
	var e *api.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

func (x *daemon) metric(t *testing.T, name string) float64 {
	t.Helper()
	text, err := x.c.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

var waitFor = testvm.WaitFor

func checkPage(t *testing.T, mem []byte, p uint64, got []byte) {
	t.Helper()
	testvm.CheckPage(t, p, got, mem[p*ps:(p+1)*ps])
}

// prepared starts a daemon admitting VMMs of vmmUID and prepares VM
// "vm-1" of snapshot "snap"; it returns the snapshot's memory too.
func prepared(t *testing.T, vmmUID int) (*daemon, *api.VM, []byte) {
	t.Helper()
	dir, mem := images(t)
	x := startAs(t, dir, vmmUID)
	vm, err := x.c.Prepare(context.Background(), "vm-1", api.PrepareRequest{Snapshot: "snap"})
	if err != nil {
		t.Fatal(err)
	}
	return x, vm, mem
}

// TestRestore: PUT, a VMM process connects to the VM's socket, /ready,
// every page right, the VMM exits, the VM is reported exited with its
// report; DELETE forgets it.
func TestRestore(t *testing.T) {
	x, vm, mem := prepared(t, -1)
	ctx := context.Background()
	if vm.State != api.StateWaiting || !strings.HasPrefix(vm.Socket, x.vmDir) {
		t.Fatalf("prepared VM %+v", vm)
	}
	child := testvm.StartChild(t, vm.Socket, testvm.Options{Size: pages * ps, Split: 40 * ps}, handshake.DialectV1_12)
	vm, err := x.c.WaitReady(ctx, "vm-1", 20*time.Second)
	if err != nil || vm.State != api.StateReady {
		t.Fatalf("ready: %+v, %v", vm, err)
	}
	for p := uint64(0); p < pages; p++ {
		got := <-child.Touch(p)
		if got.Err != nil {
			t.Fatal(got.Err)
		}
		checkPage(t, mem, p, got.Page)
	}
	if err := child.Exit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the VM to be reported exited", func() bool {
		vm, err = x.c.Get(ctx, "vm-1")
		return err == nil && vm.State != api.StateReady
	})
	if vm.State != api.StateExited || vm.Report == nil || vm.Report.Handler.Exit == "" || vm.Report.PreinstallPages == 0 {
		t.Fatalf("after the VMM exited: %+v (report %+v)", vm, vm.Report)
	}
	if err := x.c.Delete(ctx, "vm-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := x.c.Get(ctx, "vm-1"); status(err) != 404 {
		t.Fatalf("GET of a deleted VM: %v, want 404", err)
	}
}

// TestAPIErrors: every way a caller can be wrong gets its status and a
// message saying what to do.
func TestAPIErrors(t *testing.T) {
	dir, _ := images(t)
	x := start(t, dir)
	ctx := context.Background()
	if _, err := x.c.Prepare(ctx, "waiting", api.PrepareRequest{Snapshot: "snap"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, method, path, body string
		want                     int
	}{
		{"bad JSON", "PUT", "/v1/vms/a", `{"snapshot":`, 400},
		{"unknown field", "PUT", "/v1/vms/a", `{"snapshot":"snap","bogus":1}`, 400},
		{"no snapshot", "PUT", "/v1/vms/a", `{}`, 400},
		{"bad timeout", "GET", "/v1/vms/waiting/ready?timeout=soon", "", 400},
		{"negative timeout", "GET", "/v1/vms/waiting/ready?timeout=-1s", "", 400},
		{"timeout too long", "GET", "/v1/vms/waiting/ready?timeout=11m", "", 400},
		{"publish without a catalog", "POST", "/v1/snapshots", `{"image":"/x.img","name":"x"}`, 400},
	} {
		if code, e := x.raw(t, c.method, c.path, c.body); code != c.want {
			t.Errorf("%s: HTTP %d (%+v), want %d", c.name, code, e, c.want)
		}
	}
	for _, c := range []struct {
		name string
		err  error
		want int
		is   error
		say  string // the message starts with it (one wording per condition, then what to do)
	}{
		{"bad VM id", prepare(x, "no spaces allowed", "snap"), 400, api.ErrInvalid, ""},
		{"unknown snapshot", prepare(x, "b", "nosuch"), 404, api.ErrNotFound,
			`snapshot "nosuch": not found (no image ` + filepath.Join(dir, "nosuch.img") + ") (`aquifer pool ls` lists the snapshots this daemon serves)"},
		{"bad snapshot name", prepare(x, "b", "../snap"), 400, api.ErrInvalid, `invalid name "../snap": use 1-128 letters`},
		{"duplicate VM", prepare(x, "waiting", "snap"), 409, api.ErrExists, `VM "waiting": already exists (DELETE /v1/vms/ID ends it`},
		{"unavailable tier", prepare(x, "c", "down"), 503, api.ErrUnavailable, ""},
		{"open past its deadline", prepare(x, "d", "slow"), 503, api.ErrUnavailable, ""},
		{"unknown VM: GET", second(x.c.Get(ctx, "nosuch")), 404, api.ErrNotFound, `VM "nosuch": not found (GET /v1/vms lists this daemon's VMs)`},
		{"unknown VM: ready", second(x.c.WaitReady(ctx, "nosuch", time.Second)), 404, api.ErrNotFound, `VM "nosuch": not found (GET /v1/vms lists`},
		{"unknown VM: DELETE", x.c.Delete(ctx, "nosuch"), 404, api.ErrNotFound, `VM "nosuch": not found (GET /v1/vms lists`},
		{"ready timeout", second(x.c.WaitReady(ctx, "waiting", 50*time.Millisecond)), 504, api.ErrTimeout, ""},
	} {
		if got := status(c.err); got != c.want || !errors.Is(c.err, c.is) {
			t.Errorf("%s: %v (HTTP %d), want HTTP %d", c.name, c.err, got, c.want)
		}
		if c.say != "" && (c.err == nil || !strings.HasPrefix(c.err.Error(), c.say)) {
			t.Errorf("%s: %q, want it to start with %q", c.name, c.err, c.say)
		}
	}
	// Failed PUTs leave nothing behind.
	vms, err := x.c.VMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].ID != "waiting" {
		t.Fatalf("VMs after the failures: %+v, %v", vms, err)
	}
}

const nobody = 65534

// traversable lets every uid traverse the directories from dir up to the
// temporary directory, as the path into a jailer's chroot would be.
func traversable(t *testing.T, dir string) {
	t.Helper()
	for p := dir; p != filepath.Clean(os.TempDir()) && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
}

func prepare(x *daemon, id, snap string) error {
	_, err := x.c.Prepare(context.Background(), id, api.PrepareRequest{Snapshot: snap})
	return err
}

func second[T any](_ T, err error) error { return err }

// TestWrongPeerRefused: a process of another uid that connects to a VM's
// socket is refused before anything is read from it and counted; the socket
// keeps waiting, and the real VMM is then served. The control API refuses
// such a client too.
func TestWrongPeerRefused(t *testing.T) {
	x, vm, mem := prepared(t, -1)
	ctx := context.Background()
	// Let uid 65534 reach the sockets.
	traversable(t, x.vmDir)
	for _, p := range []string{vm.Socket, x.api} {
		if err := os.Chmod(p, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	intruder := testvm.New(t, testvm.Options{Size: pages * ps})
	if err := intruder.SendAs(nobody, vm.Socket, handshake.DialectV1_12); err != nil && !errors.Is(err, unix.EPIPE) {
		t.Fatalf("the other uid could not even connect: %v", err)
	}
	waitFor(t, "the refusal to be counted", func() bool { return x.metric(t, "aquifer_uffd_refused_peers_total") == 1 })
	if got, err := x.c.Get(ctx, "vm-1"); err != nil || got.State != api.StateWaiting {
		t.Fatalf("after a refused peer: %+v, %v; want still waiting", got, err)
	}
	// The control API answers no one but its own uid and root.
	err := testvm.AsUID(nobody, func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: x.api}); err != nil {
			return err
		}
		if _, err := unix.Write(fd, []byte("GET /v1/vms HTTP/1.1\r\nHost: aquifer\r\n\r\n")); err != nil {
			return nil // closed already
		}
		b := make([]byte, 512)
		if n, _ := unix.Read(fd, b); n > 0 {
			return fmt.Errorf("answered uid %d: %q", nobody, b[:n])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	v := testvm.New(t, testvm.Options{Size: pages * ps})
	conn, err := v.Send(vm.Socket, handshake.DialectV1_12)
	if err != nil {
		t.Fatalf("the real VMM after the refused one: %v", err)
	}
	defer conn.Close()
	if _, err := x.c.WaitReady(ctx, "vm-1", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, p := range []uint64{0, 13, 40, 63} {
		if err := v.Touch(p); err != nil {
			t.Fatal(err)
		}
		checkPage(t, mem, p, v.Bytes(p))
	}
	for p := uint64(0); p < pages; p++ {
		if r, _ := intruder.Resident(p); r {
			t.Fatalf("the refused peer's memory was served (page %d)", p)
		}
	}
}

// TestJailedVMM: a daemon told that Firecracker runs as another uid (under
// the jailer) lets exactly that uid connect to the VM's socket (the daemon's
// own uid, root here, is refused) and serves it.
func TestJailedVMM(t *testing.T) {
	x, vm, mem := prepared(t, nobody)
	ctx := context.Background()
	traversable(t, x.vmDir)
	v := testvm.New(t, testvm.Options{Size: pages * ps})
	// Root, the daemon's own uid, is not the VMM; it may be refused before
	// its message is even sent.
	if conn, err := v.Send(vm.Socket, handshake.DialectV1_7); err == nil {
		conn.Close()
	} else if !errors.Is(err, unix.EPIPE) {
		t.Fatal(err)
	}
	waitFor(t, "the refusal to be counted", func() bool { return x.metric(t, "aquifer_uffd_refused_peers_total") == 1 })
	if err := v.SendAs(nobody, vm.Socket, handshake.DialectV1_7); err != nil {
		t.Fatalf("the jailed VMM (uid %d) cannot connect to its socket: %v", nobody, err)
	}
	if _, err := x.c.WaitReady(ctx, "vm-1", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, p := range []uint64{0, 31, 63} {
		if err := v.Touch(p); err != nil {
			t.Fatal(err)
		}
		checkPage(t, mem, p, v.Bytes(p))
	}
}
