package pager

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/internal/testvm"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

func counter(p *uint64) func() uint64 { return func() uint64 { return atomic.LoadUint64(p) } }

// TestRestore: the whole path. At ready every hot page is in place and the
// long zero run belongs to the kernel; then every page of the VM reads
// byte for byte as the snapshot, zero pages never reach the handler, hot
// pages never fault, and every cold extent is read exactly once (on demand
// or by the prefetcher).
func TestRestore(t *testing.T) {
	f := newFixture(t)
	snap, hot, cold := f.snapshot(t)
	v := newVM(t)
	r := serveVM(t, snap, Options{}, v)
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	for _, p := range f.pages(snapimage.Hot) {
		if !resident(t, v, p) {
			t.Fatalf("hot page %d is not installed at ready", p)
		}
	}
	toKernel := counter(&r.s.rep.ZeroPagesToKernel)
	if n := toKernel(); n < longZeroN {
		t.Fatalf("%d zero pages left to the kernel at ready, want the %d-page run at least", n, longZeroN)
	}
	nzero, nhot, _ := f.img.Counts()
	waitFor(t, "the short zero runs to be left to the kernel", func() bool { return toKernel() == nzero })
	for p := uint64(0); p < fixPages; p++ {
		f.touch(t, v, p)
	}
	rep := r.finish(t)
	if rep.PreinstallPages != nhot || rep.PreinstallBytes != nhot*ps || rep.HotFaults != 0 {
		t.Fatalf("report %+v: want all %d hot pages pre-installed and no hot fault", rep, nhot)
	}
	if rep.ZeroFaults != 0 || rep.Handler.ZeroFaults != 0 {
		t.Fatalf("report %+v: zero pages reached the handler", rep)
	}
	if h := rep.Handler; rep.ColdFaults != h.Faults+h.Exists {
		t.Fatalf("report %+v: %d cold faults, but the handler served %d and found %d present", rep, rep.ColdFaults, h.Faults, h.Exists)
	}
	for x := range f.img.ColdExtents() {
		if n := len(cold.readsOf(x)); n != 1 {
			t.Fatalf("cold extent %d read %d times, want once", x, n)
		}
	}
	if n := hot.with.Load(); n != 1 {
		t.Fatalf("the hot tier was asked for %d windows, want 1", n)
	}
	if rep.HotSource != "local" || rep.ColdSource != "local" {
		t.Fatalf("sources %q/%q", rep.HotSource, rep.ColdSource)
	}
}

// TestLateHotPage: with NoPreinstall nothing is installed before resume
// and each hot page touched after the window closed is served by latePage
// from a fresh validated window, byte for byte.
func TestLateHotPage(t *testing.T) {
	f := newFixture(t)
	snap, hot, _ := f.snapshot(t)
	v := newVM(t)
	r := serveVM(t, snap, Options{NoPreinstall: true}, v)
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	hotPages := f.pages(snapimage.Hot)
	for _, p := range hotPages {
		if resident(t, v, p) {
			t.Fatalf("hot page %d installed despite NoPreinstall", p)
		}
	}
	for _, p := range hotPages {
		f.touch(t, v, p)
	}
	rep := r.finish(t)
	if rep.PreinstallPages != 0 || rep.HotFaults != uint64(len(hotPages)) {
		t.Fatalf("report %+v: want %d hot faults and nothing pre-installed", rep, len(hotPages))
	}
	if n := hot.with.Load(); n != int32(1+len(hotPages)) {
		t.Fatalf("%d hot windows, want 1 (the empty pre-install) + 1 per late page = %d", n, 1+len(hotPages))
	}
}

// TestEarlyResume: with EarlyResume the VM is ready as soon as the long
// zero runs are the kernel's, while the hot tier has not even opened its
// window; hot pages touched then are right once the window opens.
func TestEarlyResume(t *testing.T) {
	f := newFixture(t)
	snap, hot, _ := f.snapshot(t)
	hot.gate, hot.entered = make(chan struct{}), make(chan struct{})
	v := newVM(t)
	r := serveVM(t, snap, Options{EarlyResume: true}, v)
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	if n := counter(&r.s.rep.ZeroPagesToKernel)(); n < longZeroN {
		t.Fatalf("ready with %d zero pages left to the kernel, want the long run first", n)
	}
	<-hot.entered
	hotPages := f.pages(snapimage.Hot)
	early := v.TouchAsync(hotPages[3]) // waits for the window
	close(hot.gate)
	await(t, "the early hot fault", early)
	f.check(t, hotPages[3], v.Bytes(hotPages[3]))
	for _, p := range hotPages {
		f.touch(t, v, p)
	}
	r.finish(t)
}

// TestColdExtentShared: a cold extent wanted by a demand fault and by the
// prefetcher at once is read once, whichever asked first, and the faulting
// vCPU and the rest of the extent get its verified bytes.
func TestColdExtentShared(t *testing.T) {
	t.Run("prefetch first", func(t *testing.T) {
		f := newFixture(t)
		snap, _, cold := f.snapshot(t)
		x := f.firstExtent(true)
		release := cold.holdExtent(x)
		defer release()
		v := newVM(t)
		r := serveVM(t, snap, Options{}, v)
		if err := r.ready(t); err != nil {
			t.Fatal(err)
		}
		cold.awaitEntered(t, x) // the prefetcher's read, held
		pages := f.extentPages(x)
		p := pages[len(pages)/2]
		touch := v.TouchAsync(p)
		waitFor(t, "the demand fault to join the read", func() bool { return counter(&r.s.rep.ColdFaults)() == 1 })
		release()
		await(t, "the cold fault", touch)
		f.check(t, p, v.Bytes(p))
		for _, q := range pages {
			waitFor(t, "the extent to be installed", func() bool { return resident(t, v, q) })
			f.installed(t, v, q)
		}
		rep := r.finish(t)
		if reads := cold.readsOf(x); len(reads) != 1 || !reads[0] {
			t.Fatalf("extent %d reads (prefetch?) %v, want one prefetch read", x, reads)
		}
		if rep.ColdDemandExtents != 0 || rep.ColdFaults != 1 {
			t.Fatalf("report %+v: want 1 cold fault served from the prefetched extent", rep)
		}
	})
	t.Run("demand first", func(t *testing.T) {
		f := newFixture(t)
		snap, hot, cold := f.snapshot(t)
		hot.gate, hot.entered = make(chan struct{}), make(chan struct{})
		x := f.firstExtent(true)
		release := cold.holdExtent(x)
		defer release()
		v := newVM(t)
		r := serveVM(t, snap, Options{}, v)
		<-hot.entered // no prefetch before the pre-install is done
		p := f.extentPages(x)[0]
		touch := v.TouchAsync(p)
		cold.awaitEntered(t, x) // the demand read, held
		close(hot.gate)
		if err := r.ready(t); err != nil {
			t.Fatal(err)
		}
		// The prefetcher yields while a demand read is in flight, then
		// passes the extent the demand read fetched and reads the others.
		release()
		await(t, "the cold fault", touch)
		for i, e := range f.img.ColdExtents() {
			if e.Touched && i != x {
				waitFor(t, "the prefetcher to pass the demand-read extent", func() bool { return len(cold.readsOf(i)) == 1 })
			}
		}
		for _, q := range f.extentPages(x) {
			waitFor(t, "the extent to be installed", func() bool { return resident(t, v, q) })
			f.installed(t, v, q)
		}
		r.finish(t)
		if reads := cold.readsOf(x); len(reads) != 1 || reads[0] {
			t.Fatalf("extent %d reads (prefetch?) %v, want one demand read", x, reads)
		}
	})
}

// TestTwoVCPUsSameColdPage: two vCPUs fault on the same cold page at once:
// one extent read, both woken, the page right, the second copy counted as
// Exists if it reached the pager. (The first fault's read is made on the
// reader thread: the second fault is read once that read is done, or not
// at all when the first copy's wake releases its vCPU before: the kernel
// then drops its event.)
func TestTwoVCPUsSameColdPage(t *testing.T) {
	f := newFixture(t)
	snap, _, cold := f.snapshot(t)
	x := f.firstExtent(false) // never prefetched
	release := cold.holdExtent(x)
	defer release()
	v := newVM(t)
	r := serveVM(t, snap, Options{}, v)
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	p := f.extentPages(x)[1]
	a, b := v.TouchAsync(p), v.TouchAsync(p)
	cold.awaitEntered(t, x)
	release()
	await(t, "vCPU A", a)
	await(t, "vCPU B", b)
	f.check(t, p, v.Bytes(p))
	rep := r.finish(t)
	if rep.Handler.Faults != 1 || rep.Handler.Exists != rep.ColdFaults-1 || rep.ColdDemandExtents != 1 || len(cold.readsOf(x)) != 1 {
		t.Fatalf("report %+v, %d reads of the extent: want 1 fault served, an EEXIST for a second cold fault, 1 read", rep, len(cold.readsOf(x)))
	}
}

// childVM starts a VMM child process and accepts its handshake.
func childVM(t *testing.T, dialect handshake.Dialect) (*testvm.Child, *handshake.VM, *uffd.FD) {
	t.Helper()
	return testvm.AcceptChild(t, testvm.Options{Size: fixPages * ps, Split: fixSplit, Remove: true}, dialect)
}

// wentAway checks that the session ended by itself after its VM died: no
// error, the VM's going named, nothing logged.
func (r *running) wentAway(t *testing.T) *Report {
	t.Helper()
	rep, err := r.wait(t)
	if err != nil {
		t.Fatalf("Serve after the VM died: %v", err)
	}
	if e := rep.Handler.Exit; e == "" || e == "error" || e == "stopped" {
		t.Fatalf("exit %q: want the VM's going named", e)
	}
	r.log.check(t)
	return rep
}

// TestVMExits: a VM (a real process) that dies while the pager reads the
// extent of its fault, or while the pre-install waits for the hot tier,
// ends the session: no hang, no error storm, the exit said.
func TestVMExits(t *testing.T) {
	t.Run("while its extent is read", func(t *testing.T) {
		f := newFixture(t)
		snap, _, cold := f.snapshot(t)
		x := f.firstExtent(false)
		release := cold.holdExtent(x)
		defer release()
		c, vm, u := childVM(t, handshake.DialectV1_12)
		r := serve(t, snap, Options{}, u, vm.Regions, vm.Watch.PidFD, vm.Watch.HangupFD)
		if err := r.ready(t); err != nil {
			t.Fatal(err)
		}
		pages := f.extentPages(x)
		touch := c.Touch(pages[len(pages)-1])
		cold.awaitEntered(t, x)
		c.Kill()
		release()
		r.wentAway(t)
		if res := <-touch; res.Err == nil {
			t.Fatal("the dead VM's touch reported a page")
		}
	})
	t.Run("noticed by an install", func(t *testing.T) {
		// No exit watchers (a VMM whose pidfd could not be opened): only
		// the prefetcher's install finds the VM gone, and must end serving.
		f := newFixture(t)
		snap, _, cold := f.snapshot(t)
		x := f.firstExtent(true)
		release := cold.holdExtent(x)
		defer release()
		c, vm, u := childVM(t, handshake.DialectV1_7)
		r := serve(t, snap, Options{}, u, vm.Regions, -1, -1)
		if err := r.ready(t); err != nil {
			t.Fatal(err)
		}
		cold.awaitEntered(t, x)
		c.Kill()
		release()
		if rep := r.wentAway(t); rep.Handler.Exit != "vm gone (ESRCH)" {
			t.Fatalf("exit %q, want vm gone (ESRCH)", rep.Handler.Exit)
		}
	})
	t.Run("mid extent install", func(t *testing.T) {
		f := newFixture(t)
		snap, _, _ := f.snapshot(t)
		x := f.firstExtent(false) // never prefetched
		cold := newHeldCold(t, f, x, 3)
		snap.Cold = cold
		c, vm, u := childVM(t, handshake.DialectV1_12)
		r := serve(t, snap, Options{}, u, vm.Regions, vm.Watch.PidFD, vm.Watch.HangupFD)
		t.Cleanup(cold.unhold)
		if err := r.ready(t); err != nil {
			t.Fatal(err)
		}
		p := f.extentPages(x)[0]
		got := <-c.Touch(p) // the faulting page is installed first
		if got.Err != nil {
			t.Fatal(got.Err)
		}
		f.check(t, p, got.Page)
		cold.awaitHeld(t) // the rest of the extent, held in the kernel at its 4th page
		c.Kill()
		cold.unhold()
		r.wentAway(t)
	})
	t.Run("mid pre-install", func(t *testing.T) {
		f := newFixture(t)
		if len(f.img.HotRuns()) < 2 {
			t.Fatal("fixture: the hot set is one run")
		}
		snap, good, _ := f.snapshot(t)
		tier := newHeldTier(t, f, good)
		snap.Hot = tier
		c, vm, u := childVM(t, handshake.DialectV1_7)
		r := serve(t, snap, Options{}, u, vm.Regions, vm.Watch.PidFD, -1)
		t.Cleanup(tier.unhold)
		tier.awaitHeld(t) // a hot run's UFFDIO_COPY, held in the kernel
		c.Kill()
		tier.unhold()
		err := r.ready(t)
		if err == nil || !uffd.IsGone(err) {
			t.Fatalf("ready error %v: want the pre-install to stop at the VM's exit (ESRCH)", err)
		}
		rep, serr := r.wait(t)
		if serr != nil || rep.Handler.Exit == "" {
			t.Fatalf("Serve: %q, %v", rep.Handler.Exit, serr)
		}
		if l := r.log.all(); len(l) != 1 || !strings.Contains(l[0], "pre-install failed") {
			t.Fatalf("logged %q: want the one failed pre-install", l)
		}
	})
}

// badHot serves a copy of the hot segment with one byte changed.
type badHot struct {
	seg  *offheap.Mapping
	with atomic.Int32
}

func newBadHot(t *testing.T, good restore.HotSource, page uint64) *badHot {
	t.Helper()
	seg := hotBytes(t, good)
	m, err := offheap.Anon(len(seg), unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmap() })
	copy(m.B, seg)
	m.B[page*ps+100] ^= 0x40
	return &badHot{seg: m}
}

func (b *badHot) With(_ context.Context, fn func(hotSeg) error) error {
	b.with.Add(1)
	return fn(segmentOf(b.seg.B))
}
func (b *badHot) Name() string { return "bad" }

// TestHotDigestMismatch: a hot tier that returns a page not matching its
// digest is never installed: the restore falls back to HotFallback, or
// without one fails, having placed none but checked pages.
func TestHotDigestMismatch(t *testing.T) {
	t.Run("fallback", func(t *testing.T) {
		f := newFixture(t)
		snap, good, _ := f.snapshot(t)
		bad := newBadHot(t, good, 17)
		snap.Hot, snap.HotFallback = bad, good
		good.with.Store(0)
		v := newVM(t)
		r := serveVM(t, snap, Options{}, v)
		if err := r.ready(t); err != nil {
			t.Fatal(err)
		}
		for _, p := range f.pages(snapimage.Hot) {
			f.installed(t, v, p)
		}
		rep := r.finish(t, "hot tier failed; falling back")
		if rep.HotSource != "local (fallback)" || bad.with.Load() != 1 || good.with.Load() != 1 {
			t.Fatalf("hot source %q after %d bad and %d good windows", rep.HotSource, bad.with.Load(), good.with.Load())
		}
	})
	t.Run("no fallback", func(t *testing.T) {
		f := newFixture(t)
		snap, good, _ := f.snapshot(t)
		snap.Hot = newBadHot(t, good, 5)
		v := newVM(t)
		r := serveVM(t, snap, Options{}, v)
		err := r.ready(t)
		if err == nil || !strings.Contains(err.Error(), "digest") {
			t.Fatalf("ready error %v: want the digest mismatch", err)
		}
		// Pages are checked as they are installed: the ones before the
		// bad one may be in, each the snapshot's; the bad one never is.
		if bad := f.img.HotPage(5); resident(t, v, bad) {
			t.Fatalf("hot page %d, which does not match its digest, was installed", bad)
		}
		for _, p := range f.pages(snapimage.Hot) {
			if resident(t, v, p) {
				f.check(t, p, v.Bytes(p))
			}
		}
		r.finish(t, "pre-install failed")
	})
}

// corruptCold flips a byte of every read.
type corruptCold struct{ restore.ColdSource }

func (c corruptCold) Read(ctx context.Context, off uint64, dst []byte, prefetch bool) error {
	err := c.ColdSource.Read(ctx, off, dst, prefetch)
	dst[len(dst)/2] ^= 1
	return err
}

// TestCorruptColdExtent: a cold extent that fails verification is never
// installed; the fault is not served and the session ends with the error.
func TestCorruptColdExtent(t *testing.T) {
	f := newFixture(t)
	snap, _, _ := f.snapshot(t)
	snap.Cold = corruptCold{snap.Cold}
	v := newVM(t)
	r := serveVM(t, snap, Options{NoPrefetch: true}, v)
	if err := r.ready(t); err != nil {
		t.Fatal(err)
	}
	p := f.extentPages(f.firstExtent(false))[0]
	v.TouchAsync(p) // never served; woken when the VM closes its userfaultfd
	_, err := r.wait(t)
	if err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("Serve: %v, want the cold extent's digest mismatch", err)
	}
	if resident(t, v, p) {
		t.Fatalf("cold page %d was installed from an extent that failed verification", p)
	}
}

// TestInlinePolicy: the fault loop's reader serves zero and cold faults
// itself (a worker's wake-up costs more than a tier read); a hot fault
// goes to a worker until the pre-install window is open.
func TestInlinePolicy(t *testing.T) {
	f := newFixture(t)
	snap, _, _ := f.snapshot(t)
	s, err := New(snap, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at := func(c snapimage.Class) uint64 { return f.pages(c)[0] * ps }
	if !s.Inline(at(snapimage.Cold), ps) || !s.Inline(at(snapimage.Zero), ps) {
		t.Fatal("a cold or zero fault would go to a worker")
	}
	if s.Inline(at(snapimage.Hot), ps) {
		t.Fatal("a hot fault before the window opened would be served on the reader")
	}
	s.openHot()
	if !s.Inline(at(snapimage.Hot), ps) {
		t.Fatal("a hot fault with the window open would go to a worker")
	}
}
