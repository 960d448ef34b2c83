package pod_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/aquifer-pool/aquifer/cxl"
	"github.com/aquifer-pool/aquifer/cxl/ncsim"
	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/cxl/pod/podtest"
	"github.com/aquifer-pool/aquifer/cxl/shm"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

func TestPlanDefault(t *testing.T) {
	g, err := pod.Plan(1<<30, 2<<20, pod.FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g.DataOff%(2<<20) != 0 || g.HostTableOff != 2<<20 || g.SlotSize != 2<<20 || g.DescPerChunk != 512 {
		t.Fatalf("devdax geometry %+v", g)
	}
	if g.DataOff+int64(g.Chunks)*g.ChunkSize > 1<<30 || g.Chunks < 400 {
		t.Fatalf("geometry wastes or overflows: %+v", g)
	}
	g2, err := pod.Plan(64<<20, 4096, pod.FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g2.SlotSize != 4096 || g2.HostTableOff != 4096 {
		t.Fatalf("shm geometry %+v", g2)
	}
	if _, err := pod.Plan(1<<20, 4096, pod.FormatOptions{}); err == nil {
		t.Fatal("1 MiB region accepted for 2 MiB chunks")
	}
	if _, err := pod.Plan(64<<20, 4096, pod.FormatOptions{ChunkSize: 1000}); err == nil {
		t.Fatal("unaligned chunk size accepted")
	}
}

func TestSuperblockRoundTrip(t *testing.T) {
	s := ncsim.New(ncsim.Config{Size: 1 << 20, Hosts: 1, Seed: 1})
	h := s.Host(0)
	if _, err := pod.ReadGeometry(h); !errors.Is(err, pod.ErrNotFormatted) {
		t.Fatalf("blank region: %v", err)
	}
	g, err := pod.Format(h, pod.FormatOptions{ChunkSize: 64 << 10, HostSlots: 8, PodID: 9})
	if err != nil {
		t.Fatal(err)
	}
	got, err := pod.ReadGeometry(h)
	if err != nil || got != g {
		t.Fatalf("read back %+v, %v; want %+v", got, err, g)
	}
	// A single flipped bit is rejected.
	b := h.Load64(24)
	h.Store64(24, b^1)
	h.Flush(24, 8)
	h.Fence()
	if _, err := pod.ReadGeometry(h); err == nil {
		t.Fatal("corrupted superblock accepted")
	}
}

// TestPublishGetReclaim covers the single-host life cycle on a real shared
// mapping: publish, replace, reclaim, read-only reader, crash recovery of a
// Writing descriptor, fencing of a host whose lease expired.
func TestPublishGetReclaim(t *testing.T) {
	ctx := context.Background()
	path, g := formatTempPod(t, "aquifer-pod-unit", 8<<20, pod.FormatOptions{ChunkSize: 64 << 10, HostSlots: 4})
	coord := podtest.NewMemCoordinator()
	wr, err := shm.Open(path, g.Windows(0, true), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wr.Close()
	w, err := pod.Open(ctx, wr, 0, coord, pod.Options{Owner: true})
	if err != nil {
		t.Fatal(err)
	}
	rr, err := shm.Open(path, g.Windows(1, false), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Close()
	r, err := pod.Open(ctx, rr, 1, coord, pod.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Acquire(ctx, 0); err == nil {
		t.Fatal("read-only host acquired a chunk")
	}
	if err := w.Acquire(ctx, 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for v := uint64(1); v <= 40; v++ {
		if _, err := w.Publish(ctx, "k", payload(7, v, 5000)); err != nil {
			t.Fatalf("publish v%d: %v", v, err)
		}
		n, _, err := r.Get(ctx, "k", buf)
		if err != nil {
			t.Fatal(err)
		}
		if key, ver, ok := check(buf[:n]); !ok || key != 7 || ver != v {
			t.Fatalf("read v%d: key %d ver %d ok %v", v, key, ver, ok)
		}
	}
	// 40 versions of 2 pages in a 16-page chunk: only possible if
	// reclamation freed the old ones.
	if st := w.Stats(); st.Freed < 30 {
		t.Fatalf("only %d extents freed: %+v", st.Freed, st)
	}
	// A reader inside a read section blocks reclamation.
	ref, _ := coord.Lookup(ctx, "k")
	r.Enter()
	if _, err := w.Publish(ctx, "k", payload(7, 41, 100)); err != nil {
		t.Fatal(err)
	}
	w.Reclaim(ctx)
	if w.Pending() == 0 {
		t.Fatal("extent freed while a live host was inside a read")
	}
	r.Exit()
	if _, err := r.ReadRef(ref, buf); !errors.Is(err, pod.ErrSuperseded) {
		t.Fatalf("retired version read: %v", err)
	}
	if n, _ := w.Reclaim(ctx); n == 0 || w.Pending() != 0 {
		t.Fatalf("reclaim after the reader left freed %d, pending %d", n, w.Pending())
	}
	// Crash mid-publish: leave a Writing descriptor with half the data.
	doff := g.DescOffset(1)
	pod.StoreDesc(wr, doff, &pod.Desc{Gen: w.DescGen(0, 1) + 1, Token: w.ChunkToken(0), State: pod.StateWriting, Off: uint64(g.ChunkOffset(0)), Len: 4096})
	wr.Flush(doff, pod.DescSize)
	wr.Fence()
	coord.Expire(0)
	if _, err := w.Publish(ctx, "k", payload(7, 42, 100)); !errors.Is(err, pod.ErrFenced) {
		t.Fatalf("fenced host published: %v", err)
	}
	// Host 2 takes the chunk over and recovers it.
	hr, err := shm.Open(path, g.Windows(2, true), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hr.Close()
	h2, err := pod.Open(ctx, hr, 2, coord, pod.Options{Owner: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.Acquire(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if h2.Stats().RecoveredDescs == 0 {
		t.Fatal("Writing descriptor left by the crashed owner was not recovered")
	}
	if _, _, err := h2.ReadDesc(1, buf); !errors.Is(err, pod.ErrNotPublished) {
		t.Fatalf("partial extent exposed after recovery: %v", err)
	}
	n, _, err := r.Get(ctx, "k", buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, ver, ok := check(buf[:n]); !ok || ver != 41 {
		t.Fatalf("after takeover read ver %d ok %v", ver, ok)
	}
	if _, err := h2.Publish(ctx, "k", payload(7, 43, 9000)); err != nil {
		t.Fatal(err)
	}

	// Install through userfaultfd straight from the region.
	f, guest := uffdGuest(t, 16<<10)
	ref, _ = coord.Lookup(ctx, "k")
	n, err = r.Install(ref, func(addr uintptr, n int) error {
		_, err := f.Copy(guest.Addr(), addr, uintptr((n+pod.PageSize-1)/pod.PageSize*pod.PageSize), false)
		return err
	})
	if err != nil || n != 9000 {
		t.Fatalf("install: %d, %v", n, err)
	}
	if _, ver, ok := check(guest.B[:n]); !ok || ver != 43 {
		t.Fatalf("installed ver %d ok %v", ver, ok)
	}
	var _ cxl.Region = rr
}

// formatTempPod creates an emulated pod file of size bytes in /dev/shm,
// removed when tb ends, and formats it with o.
func formatTempPod(tb testing.TB, prefix string, size int64, o pod.FormatOptions) (string, pod.Geometry) {
	tb.Helper()
	path := shm.TempPath(prefix)
	if err := shm.Create(path, size); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.Remove(path) })
	r, err := shm.Open(path, shm.All(size), nil)
	if err != nil {
		tb.Fatal(err)
	}
	g, err := pod.Format(r, o)
	r.Close()
	if err != nil {
		tb.Fatal(err)
	}
	return path, g
}

// uffdGuest maps size bytes of anonymous guest memory registered (MISSING)
// with a new userfaultfd, both released when tb ends; it skips tb where
// userfaultfd is unavailable.
func uffdGuest(tb testing.TB, size int) (*uffd.FD, *offheap.Mapping) {
	tb.Helper()
	f, err := uffd.New()
	if err != nil {
		tb.Skipf("userfaultfd unavailable: %v", err)
	}
	tb.Cleanup(func() { f.Close() })
	if _, err := f.API(0); err != nil {
		tb.Fatal(err)
	}
	guest, err := offheap.Anon(size, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { guest.Unmap() })
	if _, err := f.Register(guest.Addr(), uintptr(size), uffd.RegisterModeMissing); err != nil {
		tb.Fatal(err)
	}
	return f, guest
}

// TestInstallMany: a value stored as extents in two chunks is installed in
// one read section, every extent validated; a retired extent makes it fail
// over instead of installing stale bytes.
func TestInstallMany(t *testing.T) {
	ctx := context.Background()
	path, g := formatTempPod(t, "aquifer-pod-many", 8<<20, pod.FormatOptions{ChunkSize: 64 << 10, HostSlots: 4})
	coord := podtest.NewMemCoordinator()
	wr, err := shm.Open(path, g.Windows(0, true), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wr.Close()
	w, err := pod.Open(ctx, wr, 0, coord, pod.Options{Owner: true})
	if err != nil {
		t.Fatal(err)
	}
	rr, err := shm.Open(path, g.Windows(1, false), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Close()
	r, err := pod.Open(ctx, rr, 1, coord, pod.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for c := 0; c < 2; c++ {
		if err := w.Acquire(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	// Two 60 KiB pieces: each fills most of a 64 KiB chunk.
	parts := [][]byte{payload(1, 1, 60<<10), payload(2, 1, 60<<10)}
	var refs []pod.Ref
	for i, b := range parts {
		ref, err := w.Publish(ctx, fmt.Sprint("v#", i), b)
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, ref)
	}
	if refs[0].Desc/g.DescPerChunk == refs[1].Desc/g.DescPerChunk {
		t.Fatalf("both pieces in one chunk: %+v", refs)
	}
	var got [][]byte
	n, err := r.InstallMany(refs, func(addrs []uintptr, lens []int) error {
		got = got[:0]
		for i := range addrs {
			got = append(got, append([]byte(nil), offheap.At(addrs[i], lens[i])...))
		}
		return nil
	})
	if err != nil || n != 120<<10 || len(got) != 2 || !bytes.Equal(got[0], parts[0]) || !bytes.Equal(got[1], parts[1]) {
		t.Fatalf("InstallMany: %d bytes, %v", n, err)
	}
	// A caller that checks the bytes itself: its ErrStale is a failed
	// check (retried), any other error is returned at once, and a check
	// that never passes falls back after MaxAttempts calls.
	for _, rs := range [][]pod.Ref{refs, refs[:1]} {
		calls := 0
		n, err = r.InstallManyChecked(rs, func(addrs []uintptr, lens []int) error {
			calls++
			if !bytes.Equal(offheap.At(addrs[0], lens[0]), parts[0]) {
				t.Errorf("checked install %d was given other bytes", calls)
			}
			if calls == 1 {
				return fmt.Errorf("page 3: %w", pod.ErrStale)
			}
			return nil
		})
		if err != nil || n != len(rs)*(60<<10) || calls != 2 {
			t.Fatalf("InstallManyChecked of %d extents, stale once: %d bytes, %d calls, %v", len(rs), n, calls, err)
		}
		calls = 0
		if _, err := r.InstallManyChecked(rs, func([]uintptr, []int) error { calls++; return pod.ErrStale }); !errors.Is(err, pod.ErrFallback) || calls != 8 {
			t.Fatalf("InstallManyChecked, always stale: %d calls, %v; want ErrFallback after 8", calls, err)
		}
		boom := errors.New("boom")
		calls = 0
		if _, err := r.InstallManyChecked(rs, func([]uintptr, []int) error { calls++; return boom }); !errors.Is(err, boom) || calls != 1 {
			t.Fatalf("InstallManyChecked, failing: %d calls, %v", calls, err)
		}
	}
	// Retire the second piece: the whole value must fail over.
	if err := w.Unpublish(ctx, "v#1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.InstallMany(refs, func([]uintptr, []int) error { return nil }); !errors.Is(err, pod.ErrFallback) && !errors.Is(err, pod.ErrSuperseded) {
		t.Fatalf("InstallMany with a retired piece: %v, want a fallback", err)
	}
}
