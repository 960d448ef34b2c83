package pagerd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/internal/testsnap"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/vmmproc"
	"github.com/aquifer-pool/aquifer/vmstate"
	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
)

// These tests take VMs over in one process: a stand-in VMM (a child
// process: its faults must come from another process than the serving
// one) restores through a socket; "the dead daemon" is the test itself, or
// a daemon of this process; the successor is a Daemon started on the same
// directories. Every page the VMM reads is compared with the memory file.

const vmmEnv = "AQUIFER_PAGERD_TEST_VMM" // socket|memsize

func init() {
	if spec := os.Getenv(vmmEnv); spec != "" {
		if err := testVMM(spec); err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// testVMM maps guest memory, registers it on a userfaultfd and sends the
// 1.12 handshake to the socket; then "touch N" reads page N (faulting)
// and prints its xxhash; "balloon OFF LEN" discards a range as
// Firecracker's balloon does; EOF exits.
func testVMM(spec string) error {
	sock, sizeS, _ := strings.Cut(spec, "|")
	size, _ := strconv.ParseUint(sizeS, 10, 64)
	m, err := offheap.Anon(int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		return err
	}
	u, err := uffd.New()
	if err != nil {
		return err
	}
	if _, err := u.API(uffd.FeatureEventRemove); err != nil {
		return err
	}
	if _, err := u.Register(m.Addr(), uintptr(size), uffd.RegisterModeMissing); err != nil {
		return err
	}
	regions := []handshake.Region{{BaseHostVirtAddr: uint64(m.Addr()), Size: size, PageSize: 4096}}
	c, err := handshake.Send(sock, regions, handshake.DialectV1_12, u.Fd())
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Println("SENT")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch f[0] {
		case "touch":
			p, _ := strconv.Atoi(f[1])
			fmt.Printf("PAGE %d %016x\n", p, xxhash.Sum64(m.B[p*4096:(p+1)*4096]))
		case "balloon":
			off, _ := strconv.Atoi(f[1])
			n, _ := strconv.Atoi(f[2])
			if err := unix.Madvise(m.B[off:off+n], unix.MADV_DONTNEED); err != nil {
				return err
			}
			fmt.Println("BALLOONED")
		}
	}
	return nil
}

type testVM struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startVMM(t *testing.T, sock string, size uint64) *testVM {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// No asynchronous preemption in the VMM: a signal to a thread blocked
	// in a userfault makes the kernel retry the fault, which re-queues a
	// fault the dead daemon had read as an unread one, and the tests count
	// which kind the successor finds.
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%d", vmmEnv, sock, size), "GODEBUG=asyncpreemptoff=1")
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	v := &testVM{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	v.expect(t, "SENT")
	return v
}

func (v *testVM) expect(t *testing.T, prefix string) string {
	t.Helper()
	if !v.out.Scan() {
		t.Fatalf("the VMM stopped before %q", prefix)
	}
	if l := v.out.Text(); strings.HasPrefix(l, prefix) {
		return l
	} else {
		t.Fatalf("the VMM said %q, want %q", l, prefix)
	}
	return ""
}

// touch has the VMM read page p (asynchronously: it may block on the
// fault); read collects its answer.
func (v *testVM) touch(p int) { fmt.Fprintf(v.in, "touch %d\n", p) }

func (v *testVM) read(t *testing.T, p int) uint64 {
	t.Helper()
	l := v.expect(t, fmt.Sprintf("PAGE %d ", p))
	h, err := strconv.ParseUint(strings.Fields(l)[2], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

type fixture struct {
	dir, images, sockDir, stateDir string
	mem                            []byte
	snap                           *restore.Snapshot
}

const memBytes = 4 << 20

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{dir: dir, images: filepath.Join(dir, "images"), sockDir: filepath.Join(dir, "vms"), stateDir: filepath.Join(dir, "vms.state")}
	os.MkdirAll(f.images, 0o700)
	memPath := filepath.Join(dir, "mem")
	if _, err := testsnap.Write(memPath, testsnap.Spec{Size: memBytes, ZeroFrac: 0.5, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	tr := testsnap.Trace(testsnap.TraceSpec{MemSize: memBytes, Accesses: 300, Pages: 200, Seed: 6})
	if _, err := snapimage.Convert(memPath, filepath.Join(f.images, "snap.img"), snapimage.ConvertOptions{Trace: tr, ExtentPages: 8}); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.mem, err = os.ReadFile(memPath); err != nil {
		t.Fatal(err)
	}
	if f.snap, err = (&restore.Dir{Path: f.images}).Open(context.Background(), "snap"); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) page(p int) uint64 { return xxhash.Sum64(f.mem[p*4096 : (p+1)*4096]) }

// nonZero returns a page that is not zero in the snapshot, from page p on.
func (f *fixture) nonZero(p int) int {
	for ; ; p++ {
		if !bytes.Equal(f.mem[p*4096:(p+1)*4096], make([]byte, 4096)) {
			return p
		}
	}
}

func (f *fixture) daemon(t *testing.T, mod func(*Config)) *Daemon {
	t.Helper()
	cfg := Config{Opener: &restore.Dir{Path: f.images}, SocketDir: f.sockDir, StateDir: f.stateDir,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if mod != nil {
		mod(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// deadDaemon plays a daemon that served VM id, recorded it and died with
// a fault read and unanswered: it receives the VMM's handshake, writes the
// record a daemon writes, has the VMM fault on page p, reads the fault
// from the userfaultfd and then closes everything without answering.
func (f *fixture) deadDaemon(t *testing.T, id string, p int, removed [][2]uint64) *testVM {
	t.Helper()
	os.MkdirAll(f.sockDir, 0o700)
	os.MkdirAll(f.stateDir, 0o700)
	sock := filepath.Join(f.sockDir, id+".sock")
	l, err := handshake.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	vmm := startVMM(t, sock, memBytes)
	conn, err := handshake.Accept(context.Background(), l, handshake.AcceptOptions{MemSize: memBytes}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	id0, err := vmmproc.Identify(conn.Peer.Pid, conn.Watch.PidFD)
	if err != nil {
		t.Fatal(err)
	}
	fid, _ := vmmproc.FileIDOf(conn.UFFD)
	base, _ := vmstate.NewRecord()
	rec := &vmRecord{Record: base, ID: id, Snapshot: "snap", Image: f.snap.Image.ID(), Socket: sock, Seq: 7,
		Request: api.PrepareRequest{Snapshot: "snap"}, PeerUID: os.Getuid(), Prepared: time.Now(), AcceptBy: time.Now().Add(time.Minute)}
	rec.Serve(id0, fid, conn.Dialect, conn.Regions)
	if err := vmstate.Save(filepath.Join(f.stateDir, id+".vm"), rec); err != nil {
		t.Fatal(err)
	}
	rl, _ := vmstate.OpenRemoveLog(filepath.Join(f.stateDir, id+".removes"))
	base0 := conn.Regions[0].BaseHostVirtAddr
	for _, r := range removed {
		rl.Append(base0+r[0], base0+r[1])
	}
	rl.Close()
	vmm.touch(p)
	u := uffd.FromFd(conn.UFFD)
	buf := make([]byte, 64*uffd.MsgSize)
	for deadline := time.Now().Add(10 * time.Second); ; {
		pf := []unix.PollFd{{Fd: int32(conn.UFFD), Events: unix.POLLIN}}
		unix.Poll(pf, 100)
		msgs, _ := u.ReadMsgs(buf, nil)
		if len(msgs) > 0 {
			if msgs[0].Event != uffd.EventPagefault || msgs[0].Address&^4095 != base0+uint64(p)*4096 {
				t.Fatalf("unexpected event %s", msgs[0].String())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the VMM's fault never arrived")
		}
	}
	return vmm // conn's deferred Close "kills" this daemon: the fault stays unanswered
}

// TestAdoptWakesUnansweredFault: a daemon died with a fault read and never
// answered; its successor takes the VM back from the VMM, wakes the
// faulting thread, serves the page (the snapshot's bytes) and the rest of
// the VM, and forgets the VM's record once the VMM exits.
func TestAdoptWakesUnansweredFault(t *testing.T) {
	f := newFixture(t)
	p := f.nonZero(100)
	vmm := f.deadDaemon(t, "vm1", p, nil)
	d := f.daemon(t, nil)
	if got := vmm.read(t, p); got != f.page(p) {
		t.Fatalf("page %d after the takeover: hash %x, want %x", p, got, f.page(p))
	}
	for _, q := range []int{0, 1, f.nonZero(500), memBytes/4096 - 1} {
		vmm.touch(q)
		if got := vmm.read(t, q); got != f.page(q) {
			t.Fatalf("page %d: hash %x, want %x", q, got, f.page(q))
		}
	}
	v, err := d.Get("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if v.Adopted == nil || v.Adopted.From != api.AdoptedRestart || v.Adopted.PendingFaults != 1 || v.Adopted.FirstFault == nil {
		t.Fatalf("adoption %+v", v.Adopted)
	}
	if v.VMMPID != vmm.cmd.Process.Pid || v.Socket == "" {
		t.Fatalf("VM %+v", v)
	}
	// New VMs do not reuse the adopted VM's socket.
	if d.seq < 7 {
		t.Fatalf("socket sequence %d restarted below the adopted VM's", d.seq)
	}
	vmm.in.Close()
	waitState(t, d, "vm1", api.StateExited)
	if _, err := os.Stat(filepath.Join(f.stateDir, "vm1.vm")); !os.IsNotExist(err) {
		t.Fatalf("record of an exited VM: %v", err)
	}
}

func waitState(t *testing.T, d *Daemon, id, state string) *api.VM {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		v, err := d.Get(id)
		if err == nil && v.State == state {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM %s: %+v %v, want state %s", id, v, err, state)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestAdoptReplaysRemoved: a page the VM gave to the balloon before the
// daemon died reads zeros after the takeover, never snapshot content.
func TestAdoptReplaysRemoved(t *testing.T) {
	f := newFixture(t)
	q := f.nonZero(300)
	p := f.nonZero(q + 8)
	vmm := f.deadDaemon(t, "vm1", p, [][2]uint64{{uint64(q) * 4096, uint64(q+4) * 4096}})
	f.daemon(t, nil)
	if got := vmm.read(t, p); got != f.page(p) {
		t.Fatalf("page %d: hash %x, want %x", p, got, f.page(p))
	}
	zero := xxhash.Sum64(make([]byte, 4096))
	for r := q; r < q+4; r++ {
		vmm.touch(r)
		if got := vmm.read(t, r); got != zero {
			t.Fatalf("ballooned page %d read %x, want zeros %x", r, got, zero)
		}
	}
}

// TestAdoptRefuses: records that cannot be served again are handled:
// a VMM that is gone (or a pid now naming another process) and an
// unreadable record are forgotten; a snapshot republished with another
// image fails the VM (its pages cannot be served the same); an expired
// wait is forgotten, a live one gets its socket back.
func TestAdoptRefuses(t *testing.T) {
	f := newFixture(t)
	os.MkdirAll(f.sockDir, 0o700)
	os.MkdirAll(f.stateDir, 0o700)
	base, _ := vmstate.NewRecord()
	self, _ := vmmproc.StartTime(os.Getpid())
	region := []handshake.Region{{BaseHostVirtAddr: 1 << 30, Size: memBytes, PageSize: 4096}}
	write := func(id string, mod func(*vmRecord)) {
		r := &vmRecord{Record: base, ID: id, Snapshot: "snap", Image: f.snap.Image.ID(), Socket: filepath.Join(f.sockDir, id+".sock"),
			Request: api.PrepareRequest{Snapshot: "snap"}, PeerUID: os.Getuid(), Prepared: time.Now(), AcceptBy: time.Now().Add(time.Minute)}
		if mod != nil {
			mod(r)
		}
		if err := vmstate.Save(filepath.Join(f.stateDir, id+".vm"), r); err != nil {
			t.Fatal(err)
		}
	}
	write("reused", func(r *vmRecord) {
		r.Serve(vmmproc.Identity{PID: os.Getpid(), StartTime: self + 1, BootID: base.BootID}, vmmproc.FileID{Ino: 1}, handshake.DialectV1_12, region)
	})
	write("gone", func(r *vmRecord) {
		r.Serve(vmmproc.Identity{PID: 1 << 22, StartTime: 1, BootID: base.BootID}, vmmproc.FileID{Ino: 1}, handshake.DialectV1_12, region)
	})
	write("expired", func(r *vmRecord) { r.AcceptBy = time.Now().Add(-time.Second) })
	write("waiting", nil)
	os.WriteFile(filepath.Join(f.stateDir, "junk.vm"), []byte("{not json"), 0o600)
	// A live VMM whose snapshot was republished with another image.
	vmm := f.deadDaemon(t, "republished", f.nonZero(10), nil)
	var r vmRecord
	vmstate.Load(filepath.Join(f.stateDir, "republished.vm"), &r)
	r.Image = "0123456789abcdef"
	vmstate.Save(filepath.Join(f.stateDir, "republished.vm"), &r)

	d := f.daemon(t, nil)
	for _, id := range []string{"reused", "gone", "expired", "junk"} {
		if _, err := d.Get(id); !errors.Is(err, ErrNoVM) {
			t.Errorf("%s: %v", id, err)
		}
		if _, err := os.Stat(filepath.Join(f.stateDir, id+".vm")); !os.IsNotExist(err) {
			t.Errorf("%s: record kept: %v", id, err)
		}
	}
	v := waitState(t, d, "republished", api.StateFailed)
	if !strings.Contains(v.Error, "another image") {
		t.Fatalf("republished: %s", v.Error)
	}
	_ = vmm
	w, err := d.Get("waiting")
	if err != nil || w.State != api.StateWaiting {
		t.Fatalf("waiting: %+v %v", w, err)
	}
	if st, err := os.Stat(w.Socket); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the waiting VM's socket is not back: %v", err)
	}
	m := metricsText(t, d)
	for _, want := range []string{`aquifer_adoptions_total{from="restart",outcome="vmm_gone"} 2`, `aquifer_adoptions_total{from="restart",outcome="unreadable"} 1`,
		`aquifer_adoptions_total{from="restart",outcome="expired"} 1`, `aquifer_adoptions_total{from="restart",outcome="waiting"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func metricsText(t *testing.T, d *Daemon) string {
	t.Helper()
	mf, err := d.cfg.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, f := range mf {
		for _, m := range f.Metric {
			var labels []string
			for _, l := range m.Label {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := f.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			if c := m.Counter; c != nil {
				fmt.Fprintf(&b, "%s %v\n", name, c.GetValue())
			}
		}
	}
	return b.String()
}

// running is a daemon serving its API and handoff sockets.
type running struct {
	*Daemon
	api, handoff string
	cancel       context.CancelFunc
	served       chan error
}

func (f *fixture) run(t *testing.T, mod func(*Config)) *running {
	t.Helper()
	r := &running{api: filepath.Join(f.dir, "api.sock"), served: make(chan error, 1)}
	r.handoff = r.api + ".handoff"
	r.Daemon = f.daemon(t, func(c *Config) {
		c.APISocket = r.api
		if mod != nil {
			mod(c)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	t.Cleanup(cancel)
	go func() { r.served <- r.Serve(ctx, r.api) }()
	go r.ServeHandoff(ctx, r.handoff)
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, e1 := os.Stat(r.api)
		_, e2 := os.Stat(r.handoff)
		if e1 == nil && e2 == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon's sockets never appeared")
		}
		time.Sleep(time.Millisecond)
	}
	return r
}

// served prepares VM id on r, starts its VMM and waits until it is ready.
func (f *fixture) served(t *testing.T, r *running, id string) *testVM {
	t.Helper()
	v, err := r.Prepare(context.Background(), id, api.PrepareRequest{Snapshot: "snap"})
	if err != nil {
		t.Fatal(err)
	}
	vmm := startVMM(t, v.Socket, memBytes)
	waitState(t, r.Daemon, id, api.StateReady)
	return vmm
}

// checkPages has the VMM read pages and compares them with the snapshot.
func (f *fixture) checkPages(t *testing.T, vmm *testVM, pages ...int) {
	t.Helper()
	for _, p := range pages {
		vmm.touch(p)
		if got := vmm.read(t, p); got != f.page(p) {
			t.Fatalf("page %d: hash %x, want %x", p, got, f.page(p))
		}
	}
}

// TestHandoff: a successor started with HandoffFrom takes a serving VM
// and a waiting one over (the VMM of the second connects only after the
// handoff, to the same socket); the predecessor hands over and says so;
// both VMs are served by the successor, every page the snapshot's.
func TestHandoff(t *testing.T) {
	f := newFixture(t)
	a := f.run(t, nil)
	ctx := context.Background()
	vmm1 := f.served(t, a, "vm1")
	f.checkPages(t, vmm1, 0, f.nonZero(200), 700)
	v2, err := a.Prepare(ctx, "vm2", api.PrepareRequest{Snapshot: "snap"})
	if err != nil {
		t.Fatal(err)
	}

	b := f.daemon(t, func(c *Config) { c.HandoffFrom, c.APISocket = a.handoff, a.api })
	select {
	case <-a.HandedOver():
	case <-time.After(10 * time.Second):
		t.Fatal("the predecessor never said it handed over")
	}
	if err := <-a.served; err != nil {
		t.Fatalf("the predecessor's API: %v", err)
	}
	if _, err := os.Stat(a.api); err != nil {
		t.Fatalf("the API socket went with the predecessor: %v", err)
	}
	f.checkPages(t, vmm1, 1, f.nonZero(900), 1000)
	vmm2 := startVMM(t, v2.Socket, memBytes)
	f.checkPages(t, vmm2, 0, f.nonZero(333))
	for _, id := range []string{"vm1", "vm2"} {
		v, err := b.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if id == "vm1" && (v.Adopted == nil || v.Adopted.From != api.AdoptedHandoff) {
			t.Fatalf("%s: %+v", id, v.Adopted)
		}
	}
	if _, err := b.Prepare(ctx, "vm3", api.PrepareRequest{Snapshot: "snap"}); err != nil {
		t.Fatalf("a new VM on the successor: %v", err)
	}
	if m := metricsText(t, b); !strings.Contains(m, `aquifer_handoffs_total{outcome="ok",role="received"} 1`) {
		t.Fatalf("metrics: %s", m)
	}
}

// TestHandoffRefused: a successor with other directories, and one that
// cannot open a VM's snapshot, are refused; the predecessor serves on,
// unfrozen.
func TestHandoffRefused(t *testing.T) {
	f := newFixture(t)
	a := f.run(t, nil)
	ctx := context.Background()
	vmm1 := f.served(t, a, "vm1")
	v2, err := a.Prepare(ctx, "vm2", api.PrepareRequest{Snapshot: "snap"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{Opener: &restore.Dir{Path: f.images}, SocketDir: f.sockDir, StateDir: filepath.Join(f.dir, "other"), HandoffFrom: a.handoff, APISocket: a.api})
	if err == nil || !strings.Contains(err.Error(), "start it with the same ones") {
		t.Fatalf("a successor with another state directory: %v", err)
	}
	_, err = New(Config{Opener: &restore.Dir{Path: t.TempDir()}, SocketDir: f.sockDir, StateDir: f.stateDir, HandoffFrom: a.handoff, APISocket: a.api})
	if err == nil || !strings.Contains(err.Error(), "vm1") {
		t.Fatalf("a successor without the snapshot: %v", err)
	}
	f.checkPages(t, vmm1, 3, f.nonZero(400))
	vmm2 := startVMM(t, v2.Socket, memBytes)
	f.checkPages(t, vmm2, f.nonZero(10))
	if _, err := a.Prepare(ctx, "vm3", api.PrepareRequest{Snapshot: "snap"}); err != nil {
		t.Fatalf("the predecessor stayed frozen: %v", err)
	}
	select {
	case <-a.HandedOver():
		t.Fatal("the predecessor handed over to a refused successor")
	default:
	}
}

// TestHandoffSuccessorDies: a successor that goes away after the
// predecessor quiesced (and one after it stopped serving) leaves the VMs
// with the predecessor, which takes them back and serves on.
func TestHandoffSuccessorDies(t *testing.T) {
	for _, after := range []string{"quiesced", "stopped"} {
		t.Run(after, func(t *testing.T) {
			f := newFixture(t)
			a := f.run(t, nil)
			vmm1 := f.served(t, a, "vm1")
			f.checkPages(t, vmm1, 5)
			fakeSuccessor(t, f, a.handoff, after)
			f.checkPages(t, vmm1, 6, f.nonZero(1000), 1023)
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(2 * time.Millisecond) {
				v, err := a.Get("vm1")
				if err == nil && v.Adopted != nil && v.State == api.StateReady {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("vm1 was not taken back: %+v %v", v, err)
				}
			}
			select {
			case <-a.HandedOver():
				t.Fatal("handed over to a successor that died")
			default:
			}
		})
	}
}

// fakeSuccessor speaks the successor's side of a handoff up to after,
// then goes away (closing every descriptor it received).
func fakeSuccessor(t *testing.T, f *fixture, path, after string) {
	t.Helper()
	c, err := netDialPacket(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hc := &hoConn{c: c, deadline: time.Now().Add(10 * time.Second)}
	if err := hc.send(hoMsg{Op: "hello", Version: handoffVersion, SocketDir: f.sockDir, StateDir: f.stateDir}); err != nil {
		t.Fatal(err)
	}
	var all []int
	defer func() { closeFDs(all) }()
	for _, want := range []string{"begin", "vm", "sent"} {
		_, fds, err := hc.recv(want)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, fds...)
	}
	hc.send(hoMsg{Op: "ready"})
	if _, _, err := hc.recv("quiesced"); err != nil {
		t.Fatal(err)
	}
	if after == "quiesced" {
		return
	}
	hc.send(hoMsg{Op: "serving"})
	if _, _, err := hc.recv("stopped"); err != nil {
		t.Fatal(err)
	}
}

func netDialPacket(path string) (*net.UnixConn, error) {
	return net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
}

// TestReadyMeansRecorded: the serving record is written beside the
// pre-install, but a VM reported ready is always recorded (so a successor
// can take it back): phase serving, its VMM, its regions.
func TestReadyMeansRecorded(t *testing.T) {
	f := newFixture(t)
	r := f.run(t, nil)
	for i := range 5 {
		id := fmt.Sprintf("vm%d", i)
		vmm := f.served(t, r, id)
		var rec vmRecord
		if err := vmstate.Load(filepath.Join(f.stateDir, id+".vm"), &rec); err != nil {
			t.Fatalf("%s is ready: %v", id, err)
		}
		if rec.Phase != vmstate.PhaseServing || rec.VMM == nil || rec.VMM.PID != vmm.cmd.Process.Pid || len(rec.Regions) == 0 {
			t.Fatalf("%s is ready, its record: %+v", id, rec.Record)
		}
		vmm.in.Close()
		waitState(t, r.Daemon, id, api.StateExited)
	}
}
