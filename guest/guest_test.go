package guest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/guest"
	"github.com/aquifer-pool/aquifer/handler"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/internal/testsnap"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/wset"
)

// childEnv makes the test binary run one guest.Run and print its result:
// a guest restored through a userfaultfd runs in a process of its own, as
// it does beside a real handler. (In the handler's process, a vCPU's
// user-mode fault could wait inside code the Go runtime cannot preempt —
// the race detector's atomics are such code — and stall a garbage
// collection that the serving goroutines must wait for.)
const childEnv = "AQUIFER_GUEST_TEST_RUN"

// run is what a child runs: a guest.Config without its trace and hooks.
type run struct {
	Mem       string            `json:"mem"`
	Backend   guest.Backend     `json:"backend"`
	Socket    string            `json:"socket"`
	Dialect   handshake.Dialect `json:"dialect"`
	GapStart  uint64            `json:"gap_start"`
	VCPUs     int               `json:"vcpus"`
	Trace     string            `json:"trace"`
	Balloon   *guest.Balloon    `json:"balloon"`
	DropCache bool              `json:"drop_cache"`
	// Prepare "socket" gives Socket through Config.Prepare (Config.Socket
	// empty); "fail" makes Config.Prepare fail.
	Prepare string `json:"prepare,omitempty"`
}

type result struct {
	Report *guest.Report `json:"report"`
	Err    string        `json:"error"`
}

func TestMain(m *testing.M) {
	if spec, ok := os.LookupEnv(childEnv); ok {
		json.NewEncoder(os.Stdout).Encode(runChild(spec))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runChild(spec string) result {
	var r run
	if err := json.Unmarshal([]byte(spec), &r); err != nil {
		return result{Err: err.Error()}
	}
	tr, err := wset.ReadFile(r.Trace)
	if err != nil {
		return result{Err: err.Error()}
	}
	cfg := guest.Config{MemPath: r.Mem, Backend: r.Backend, Socket: r.Socket, Dialect: r.Dialect,
		GapStart: r.GapStart, VCPUs: r.VCPUs, Trace: tr, Balloon: r.Balloon, DropCache: r.DropCache}
	switch r.Prepare {
	case "socket":
		cfg.Socket = ""
		cfg.Prepare = func(ctx context.Context) (string, error) { return r.Socket, ctx.Err() }
	case "fail":
		cfg.Prepare = func(context.Context) (string, error) { return "", errPrepare }
	}
	rep, err := guest.Run(context.Background(), cfg)
	res := result{Report: rep}
	if err != nil {
		res.Err = err.Error()
	}
	return res
}

var errPrepare = errors.New("the pager refused the restore")

// runGuest runs the guest of cfg in a child process (see childEnv).
func runGuest(t *testing.T, cfg guest.Config) (*guest.Report, error) {
	t.Helper()
	return runGuestPrepared(t, cfg, "")
}

// runGuestPrepared runs the guest of cfg in a child process, its
// Config.Prepare as run.Prepare says.
func runGuestPrepared(t *testing.T, cfg guest.Config, prepare string) (*guest.Report, error) {
	t.Helper()
	trace := filepath.Join(t.TempDir(), "trace")
	if err := wset.WriteFile(trace, cfg.Trace); err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(run{Mem: cfg.MemPath, Backend: cfg.Backend, Socket: cfg.Socket, Dialect: cfg.Dialect,
		GapStart: cfg.GapStart, VCPUs: cfg.VCPUs, Trace: trace, Balloon: cfg.Balloon, DropCache: cfg.DropCache, Prepare: prepare})
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("guest child: %v", err)
	}
	var res result
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("guest child said %q: %v", out, err)
	}
	if res.Err != "" {
		return res.Report, errors.New(res.Err)
	}
	return res.Report, nil
}

const (
	ps    = 4096
	pages = 512
	gap   = 200 * ps // two regions: [0, 200) and [200, 512) pages
)

// snapshot writes a 2 MiB memory file and a trace of 150 pages over two
// vCPUs, a fifth of the accesses writes.
func snapshot(t *testing.T) (string, *wset.Trace) {
	t.Helper()
	mem := filepath.Join(t.TempDir(), "mem")
	if _, err := testsnap.Write(mem, testsnap.Spec{Size: pages * ps, ZeroFrac: 0.5, Seed: 21}); err != nil {
		t.Fatal(err)
	}
	return mem, testsnap.Trace(testsnap.TraceSpec{MemSize: pages * ps, Accesses: 600, Pages: 150, WriteFrac: 0.2, CPUs: 2, Seed: 22})
}

// handle serves the memory file at mem to the VM that connects to sock, as
// `aquifer handle` does, and returns the handler's statistics when stopped.
func handle(t *testing.T, sock, mem string) (stop func() handler.Stats) {
	t.Helper()
	l, err := handshake.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	src, err := handler.OpenMemFile(mem)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan handler.Stats, 1)
	go func() {
		defer close(done)
		defer l.Close()
		defer src.Close()
		vm, err := handshake.Accept(ctx, l, handshake.AcceptOptions{MemSize: src.Size(), UID: -1}, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer vm.Close()
		u := uffd.FromFd(vm.UFFD)
		vm.UFFD = -1
		defer u.Close()
		h, err := handler.New(u, vm.Regions, src, handler.Options{NoHangup: true})
		if err != nil {
			t.Errorf("handler: %v", err)
			return
		}
		defer h.Close()
		st, err := h.Serve(ctx, -1)
		if err != nil {
			t.Errorf("serve: %v", err)
		}
		done <- st
	}()
	var st handler.Stats
	stopped := false
	stop = func() handler.Stats {
		if !stopped {
			stopped = true
			cancel()
			st = <-done
		}
		return st
	}
	t.Cleanup(func() { stop() })
	return stop
}

func distinct(tr *wset.Trace) int {
	seen := map[uint64]bool{}
	for _, a := range tr.Accesses {
		seen[a.Page] = true
	}
	return len(seen)
}

// TestUffdRestore: in every handshake dialect, the emulator restores
// through a userfaultfd handler and every access reads its snapshot bytes
// (and its own writes); each touched page is faulted in exactly once.
func TestUffdRestore(t *testing.T) {
	mem, tr := snapshot(t)
	for _, d := range handshake.Dialects {
		t.Run(d.String(), func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "uffd.sock")
			stop := handle(t, sock, mem)
			rep, err := runGuest(t, guest.Config{MemPath: mem, Backend: guest.BackendUffd, Socket: sock,
				Dialect: d, GapStart: gap, VCPUs: 2, Trace: tr})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Regions != 2 || rep.Verified != len(tr.Accesses) || rep.Mismatches != 0 || rep.Pages != distinct(tr) {
				t.Fatalf("report %+v: want 2 regions and all %d accesses verified", rep, len(tr.Accesses))
			}
			if st := stop(); st.Faults != uint64(rep.Pages) {
				t.Fatalf("handler served %d faults for %d distinct pages (%+v)", st.Faults, rep.Pages, st)
			}
		})
	}
}

// TestPrepareOnTheClock: Config.Prepare names the handler socket (the
// pager daemon's PUT /v1/vms) inside the restore: the guest restores
// through the socket it returned, Report.Prepare is the first part of
// Restore; a failing Prepare fails the run, and the uffd backend with
// neither a socket nor a Prepare is refused.
func TestPrepareOnTheClock(t *testing.T) {
	mem, tr := snapshot(t)
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	stop := handle(t, sock, mem)
	cfg := guest.Config{MemPath: mem, Backend: guest.BackendUffd, Socket: sock, Dialect: handshake.DialectV1_12, GapStart: gap, Trace: tr}
	rep, err := runGuestPrepared(t, cfg, "socket")
	if err != nil {
		t.Fatal(err)
	}
	if rep.Verified != len(tr.Accesses) || rep.Mismatches != 0 {
		t.Fatalf("report %+v: want all %d accesses verified", rep, len(tr.Accesses))
	}
	if rep.Prepare <= 0 || rep.Prepare > rep.Restore || rep.Restore > rep.EndToEnd {
		t.Fatalf("prepare %v, restore %v, end-to-end %v: the prepare is not the first part of the restore", rep.Prepare, rep.Restore, rep.EndToEnd)
	}
	if st := stop(); st.Faults != uint64(rep.Pages) {
		t.Fatalf("the handler behind the prepared socket served %d faults for %d pages", st.Faults, rep.Pages)
	}
	if rep, err := runGuestPrepared(t, cfg, "fail"); err == nil || err.Error() != errPrepare.Error() || rep != nil {
		t.Fatalf("failing prepare: report %+v, error %v", rep, err)
	}
	cfg.Socket = ""
	if _, err := runGuest(t, cfg); err == nil || !strings.Contains(err.Error(), "needs a handler socket") {
		t.Fatalf("no socket, no prepare: %v", err)
	}
}

// TestVerificationCatchesAWrongByte: a handler serving a memory file that
// differs from the snapshot in one byte of a touched page is caught, with
// the page and the byte named.
func TestVerificationCatchesAWrongByte(t *testing.T) {
	mem, tr := snapshot(t)
	b, err := os.ReadFile(mem)
	if err != nil {
		t.Fatal(err)
	}
	p := tr.Accesses[0].Page
	b[p*ps+100] ^= 0x10
	wrong := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrong, b, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	handle(t, sock, wrong)
	rep, err := runGuest(t, guest.Config{MemPath: mem, Backend: guest.BackendUffd, Socket: sock,
		Dialect: handshake.DialectV1_12, GapStart: gap, Trace: tr})
	if err == nil || rep == nil || rep.Mismatches == 0 {
		t.Fatalf("Run: %v, report %+v: the wrong byte went unnoticed", err, rep)
	}
	want := fmt.Sprintf("page %d byte 100: got %#02x want %#02x", p, b[p*ps+100], b[p*ps+100]^0x10)
	if rep.FirstError != want || !strings.Contains(err.Error(), want) {
		t.Fatalf("first error %q (%v), want %q", rep.FirstError, err, want)
	}
}

// TestBalloon: a balloon inflated at the trace's midpoint discards its
// range the way Firecracker does for each backend; accesses there
// afterwards read zeros (through the handler's REMOVE handling for Uffd).
func TestBalloon(t *testing.T) {
	mem, _ := snapshot(t)
	b := guest.Balloon{Offset: 180 * ps, Len: 60 * ps} // across the region boundary
	tr := testsnap.Trace(testsnap.TraceSpec{MemSize: pages * ps, Accesses: 800, Pages: 300, CPUs: 2, Seed: 23,
		Avoid: [2]uint64{b.Offset, b.Offset + b.Len}})
	inRange := 0
	for _, a := range tr.Accesses[len(tr.Accesses)/2:] {
		if off := a.Page * ps; off >= b.Offset && off < b.Offset+b.Len {
			inRange++
		}
	}
	if inRange == 0 {
		t.Fatal("fixture: no access in the balloon after the midpoint")
	}
	for _, be := range []guest.Backend{guest.BackendUffd, guest.BackendFile} {
		t.Run(string(be), func(t *testing.T) {
			cfg := guest.Config{MemPath: mem, Backend: be, GapStart: gap, Trace: tr, Balloon: &b, Dialect: handshake.DialectV1_12}
			if be == guest.BackendUffd {
				cfg.Socket = filepath.Join(t.TempDir(), "uffd.sock")
				stop := handle(t, cfg.Socket, mem)
				defer func() {
					if st := stop(); st.Removes == 0 || st.ZeroFaults == 0 {
						t.Errorf("handler stats %+v: want the REMOVE applied and zero pages served", st)
					}
				}()
			}
			rep, err := runGuest(t, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !rep.BalloonDone || rep.Verified != len(tr.Accesses) {
				t.Fatalf("report %+v", rep)
			}
		})
	}
}

// TestFileAndWarm: the File backend (stock Firecracker without a UFFD
// handler) and the prefaulted warm mapping read the snapshot too.
func TestFileAndWarm(t *testing.T) {
	mem, tr := snapshot(t)
	for _, be := range []guest.Backend{guest.BackendFile, guest.BackendWarm} {
		rep, err := guest.Run(context.Background(), guest.Config{MemPath: mem, Backend: be, GapStart: gap, Trace: tr, DropCache: be == guest.BackendFile})
		if err != nil {
			t.Fatalf("%s: %v", be, err)
		}
		if rep.Verified != len(tr.Accesses) {
			t.Fatalf("%s: report %+v", be, rep)
		}
	}
}

// TestBadConfig: what cannot be restored is refused with the reason.
func TestBadConfig(t *testing.T) {
	mem, tr := snapshot(t)
	far := &wset.Trace{PageSize: ps, MemSize: pages * ps, Accesses: []wset.Access{{Page: pages, Kind: wset.Read}}}
	huge := &wset.Trace{PageSize: 2 << 20, Accesses: tr.Accesses}
	for _, c := range []struct {
		cfg  guest.Config
		want string
	}{
		{guest.Config{MemPath: mem, Backend: guest.BackendFile}, "no trace"},
		{guest.Config{MemPath: mem, Backend: guest.BackendFile, Trace: far}, "beyond"},
		{guest.Config{MemPath: mem, Backend: guest.BackendFile, Trace: huge}, "Firecracker refuses the File memory backend"},
		{guest.Config{MemPath: mem, Backend: "ram", Trace: tr}, "unknown backend"},
		{guest.Config{MemPath: mem, Backend: guest.BackendFaaSnap, Trace: tr}, "needs a plan"},
		{guest.Config{MemPath: filepath.Join(t.TempDir(), "none"), Backend: guest.BackendFile, Trace: tr}, "memory file"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := guest.Run(ctx, c.cfg)
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error about %q", c.cfg.Backend, err, c.want)
		}
	}
}

// TestFirecrackerLayout: the x86_64 split around the MMIO gap.
func TestFirecrackerLayout(t *testing.T) {
	r, err := guest.FirecrackerLayout(2<<30, 0, ps)
	if err != nil || len(r) != 1 || r[0].Size != 2<<30 {
		t.Fatalf("2 GiB: %+v, %v", r, err)
	}
	r, err = guest.FirecrackerLayout(4<<30, 0, ps)
	if err != nil || len(r) != 2 || r[0].Size != guest.DefaultGapStart || r[1].GuestPhys != 4<<30 || r[1].FileOffset != guest.DefaultGapStart || r[1].Size != 1<<30 {
		t.Fatalf("4 GiB: %+v, %v", r, err)
	}
	r, err = guest.FirecrackerLayout(pages*ps, gap, ps)
	if err != nil || len(r) != 2 || r[1].FileOffset != gap || r[1].GuestPhys <= gap || r[1].GuestPhys%ps != 0 {
		t.Fatalf("scaled gap: %+v, %v", r, err)
	}
	for _, bad := range [][2]uint64{{0, 0}, {ps + 1, 0}, {pages * ps, gap + 1}} {
		if _, err := guest.FirecrackerLayout(bad[0], bad[1], ps); err == nil {
			t.Errorf("size %d gap %d accepted", bad[0], bad[1])
		}
	}
}
