package pager

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/internal/testsnap"
	"github.com/aquifer-pool/aquifer/internal/testvm"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/uffd"
)

func TestMain(m *testing.M) {
	testvm.MaybeChild()
	if conf, ok := os.LookupEnv(heldEnv); ok {
		if err := serveHeld(conf); err != nil {
			fmt.Fprintln(os.Stderr, "held-memory server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const ps = testvm.PageSize

// Fixture layout: 256 pages in two regions (the second from page 100),
// 40% of them zero plus one long zero run (pages 160..239, left to
// the kernel before resume); 140 pages touched, the first 24 non-zero
// ones hot, the other touched ones in touched cold extents, the rest in
// untouched cold extents of 8 pages.
const (
	fixPages  = 256
	fixSplit  = 100 * ps
	longZero0 = 160
	longZeroN = 80
)

type fixture struct {
	mem  []byte // the snapshot memory, byte for byte
	img  *snapimage.Image
	path string
	file *os.File
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	memPath := filepath.Join(dir, "mem")
	if _, err := testsnap.Write(memPath, testsnap.Spec{Size: fixPages * ps, ZeroFrac: 0.4, Seed: 11}); err != nil {
		t.Fatal(err)
	}
	mem, err := os.ReadFile(memPath)
	if err != nil {
		t.Fatal(err)
	}
	clear(mem[longZero0*ps : (longZero0+longZeroN)*ps])
	if err := os.WriteFile(memPath, mem, 0o600); err != nil {
		t.Fatal(err)
	}
	tr := testsnap.Trace(testsnap.TraceSpec{MemSize: fixPages * ps, Accesses: 300, Pages: 140, WriteFrac: 0.2, CPUs: 2, Seed: 5})
	f := &fixture{mem: mem, path: filepath.Join(dir, "snap.img")}
	if _, err := snapimage.Convert(memPath, f.path, snapimage.ConvertOptions{Trace: tr,
		HotBudget: snapimage.Budget{Pages: 24}, ExtentPages: 8}); err != nil {
		t.Fatal(err)
	}
	if f.img, f.file, err = snapimage.Open(f.path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.file.Close() })
	_, nhot, ncold := f.img.Counts()
	var touched int
	for _, x := range f.img.ColdExtents() {
		if x.Touched {
			touched++
		}
	}
	if nhot != 24 || ncold == 0 || touched < 2 || touched == len(f.img.ColdExtents()) {
		t.Fatalf("fixture: %d hot pages, %d cold in %d extents (%d touched): not the shape the tests need", nhot, ncold, len(f.img.ColdExtents()), touched)
	}
	return f
}

// page returns snapshot page p.
func (f *fixture) page(p uint64) []byte { return f.mem[p*ps : (p+1)*ps] }

// pages returns the guest pages of class c, in page order.
func (f *fixture) pages(c snapimage.Class) []uint64 {
	var out []uint64
	for p := uint64(0); p < fixPages; p++ {
		if k, _, _ := f.img.Classify(p); k == c {
			out = append(out, p)
		}
	}
	return out
}

// extentPages returns the guest pages of cold extent x.
func (f *fixture) extentPages(x int) []uint64 {
	e := f.img.ColdExtents()[x]
	var out []uint64
	for i := e.First; i < e.First+uint64(e.Pages); i++ {
		out = append(out, f.img.ColdPage(i))
	}
	return out
}

// extentAt returns the cold extent whose bytes hold cold-segment offset
// off (a read of a whole extent starts at its first byte).
func (f *fixture) extentAt(off uint64) int {
	for x, e := range f.img.ColdExtents() {
		if o, n := f.img.ExtentRange(e); off >= o && off < o+n {
			return x
		}
	}
	return -1
}

// firstExtent returns the first cold extent whose Touched flag is touched.
func (f *fixture) firstExtent(touched bool) int {
	for x, e := range f.img.ColdExtents() {
		if e.Touched == touched {
			return x
		}
	}
	panic("no such extent")
}

// snapshot opens the image with local sources, wrapped for observation.
func (f *fixture) snapshot(t *testing.T) (*restore.Snapshot, *hotSource, *coldSource) {
	t.Helper()
	s, err := restore.OpenLocal("test", f.path)
	if err != nil {
		t.Fatal(err)
	}
	hot := &hotSource{HotSource: s.Hot}
	cold := &coldSource{ColdSource: s.Cold, f: f, reads: map[int][]bool{}, hold: map[int]chan struct{}{}, entered: make(chan int, 64)}
	s.Hot, s.Cold = hot, cold
	return s, hot, cold
}

// hotSeg is what a restore.HotSource hands to the callback of With. The
// tests' own hot tiers make one with segmentOf and read one with bytesOf,
// so that only these three lines know its type.
type hotSeg = restore.Segment

func segmentOf(b []byte) hotSeg { return restore.Segment{b} }
func bytesOf(s hotSeg) []byte   { return bytes.Join(s, nil) }

// hotBytes returns a copy of the hot segment of src.
func hotBytes(t *testing.T, src restore.HotSource) []byte {
	t.Helper()
	var b []byte
	if err := src.With(context.Background(), func(s hotSeg) error { b = bytesOf(s); return nil }); err != nil {
		t.Fatal(err)
	}
	return b
}

// hotSource counts the validated windows asked of the hot tier and can
// hold the first one until released.
type hotSource struct {
	restore.HotSource
	with    atomic.Int32
	gate    chan struct{} // if set, the first With waits for it to close
	entered chan struct{} // if set, closed when the first With starts waiting
}

func (h *hotSource) With(ctx context.Context, fn func(seg hotSeg) error) error {
	if h.with.Add(1) == 1 && h.gate != nil {
		if h.entered != nil {
			close(h.entered)
		}
		<-h.gate
	}
	return h.HotSource.With(ctx, fn)
}

// coldSource records every cold read by extent and can hold the reads of
// chosen extents until released.
type coldSource struct {
	restore.ColdSource
	f       *fixture
	mu      sync.Mutex
	reads   map[int][]bool // extent → one entry per read: prefetch?
	hold    map[int]chan struct{}
	entered chan int     // extents whose held read started
	fail    map[int]bool // extents whose next read fails
}

func (c *coldSource) Read(ctx context.Context, off uint64, dst []byte, prefetch bool) error {
	x := c.f.extentAt(off)
	c.mu.Lock()
	c.reads[x] = append(c.reads[x], prefetch)
	gate := c.hold[x]
	fail := c.fail[x]
	delete(c.fail, x)
	c.mu.Unlock()
	if fail {
		return fmt.Errorf("extent %d: injected read failure", x)
	}
	if gate != nil {
		c.entered <- x
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return c.ColdSource.Read(ctx, off, dst, prefetch)
}

// failOnce makes the next read of extent x fail.
func (c *coldSource) failOnce(x int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail == nil {
		c.fail = map[int]bool{}
	}
	c.fail[x] = true
}

// holdExtent makes reads of extent x wait until the returned function is
// called.
func (c *coldSource) holdExtent(x int) (release func()) {
	ch := make(chan struct{})
	c.mu.Lock()
	c.hold[x] = ch
	c.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (c *coldSource) readsOf(x int) []bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]bool(nil), c.reads[x]...)
}

// awaitEntered waits until a held read of extent x has started.
func (c *coldSource) awaitEntered(t *testing.T, x int) {
	t.Helper()
	for {
		select {
		case got := <-c.entered:
			if got == x {
				return
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("the read of cold extent %d never started", x)
		}
	}
}

// logs records the session's warnings and errors.
type logs struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logs) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelWarn }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	l.mu.Lock()
	l.msgs = append(l.msgs, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

func (l *logs) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.msgs...)
}

// running is a session serving a VM.
type running struct {
	s    *Session
	log  *logs
	stop context.CancelFunc
	done chan served
}

type served struct {
	rep *Report
	err error
}

// serve starts a session of snap for a VM whose userfaultfd and regions
// are given, with exit and hangup descriptors (-1: none).
func serve(t *testing.T, snap *restore.Snapshot, o Options, u *uffd.FD, regions []handshake.Region, exitFD, hangupFD int) *running {
	t.Helper()
	r := &running{log: &logs{}, done: make(chan served, 1)}
	o.Logger = slog.New(r.log)
	s, err := New(snap, o)
	if err != nil {
		t.Fatal(err)
	}
	r.s = s
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	go func() {
		rep, err := s.Serve(ctx, u, regions, exitFD, hangupFD)
		r.done <- served{rep, err}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case x := <-r.done:
			r.done <- x
		case <-time.After(30 * time.Second):
			t.Error("the session did not end")
		}
		s.Close()
	})
	return r
}

// serveVM is serve for an in-process test VM.
func serveVM(t *testing.T, snap *restore.Snapshot, o Options, v *testvm.VM) *running {
	return serve(t, snap, o, v.UFFD, v.Regions, -1, -1)
}

func newVM(t *testing.T) *testvm.VM {
	return testvm.New(t, testvm.Options{Size: fixPages * ps, Split: fixSplit, Remove: true})
}

// ready waits for the pre-install to finish and returns its error.
func (r *running) ready(t *testing.T) error {
	t.Helper()
	select {
	case <-r.s.Ready():
		return r.s.ReadyErr()
	case <-time.After(30 * time.Second):
		t.Fatal("the session never became ready")
		return nil
	}
}

// wait waits for Serve to return by itself (the VM went away).
func (r *running) wait(t *testing.T) (*Report, error) {
	t.Helper()
	select {
	case x := <-r.done:
		r.done <- x
		return x.rep, x.err
	case <-time.After(30 * time.Second):
		var b strings.Builder
		pprof.Lookup("goroutine").WriteTo(&b, 2)
		t.Fatalf("Serve did not return after the VM went away; goroutines:\n%s", b.String())
		return nil, nil
	}
}

// finish stops the session and returns its report. The session must have
// logged no warning or error except ones containing an expected string.
func (r *running) finish(t *testing.T, expected ...string) *Report {
	t.Helper()
	r.stop()
	rep, err := r.wait(t)
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	r.log.check(t, expected...)
	return rep
}

// check fails the test for a logged warning or error that contains none of
// the expected strings.
func (l *logs) check(t *testing.T, expected ...string) {
	t.Helper()
next:
	for _, m := range l.all() {
		for _, e := range expected {
			if strings.Contains(m, e) {
				continue next
			}
		}
		t.Fatalf("the session logged %q", m)
	}
}

var (
	waitFor = testvm.WaitFor
	await   = testvm.Await
)

// touch faults page p in and checks it byte for byte against the snapshot.
func (f *fixture) touch(t *testing.T, v *testvm.VM, p uint64) {
	t.Helper()
	if err := v.Touch(p); err != nil {
		t.Fatal(err)
	}
	f.check(t, p, v.Bytes(p))
}

func (f *fixture) check(t *testing.T, p uint64, got []byte) {
	t.Helper()
	testvm.CheckPage(t, p, got, f.page(p))
}

// installed checks that page p is present (without touching it: a read of
// a missing page from this process would fault on the test's own thread)
// and holds its snapshot bytes.
func (f *fixture) installed(t *testing.T, v *testvm.VM, p uint64) {
	t.Helper()
	if !resident(t, v, p) {
		t.Fatalf("page %d is not installed", p)
	}
	f.check(t, p, v.Bytes(p))
}

func resident(t *testing.T, v *testvm.VM, p uint64) bool {
	t.Helper()
	r, err := v.Resident(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
