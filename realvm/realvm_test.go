package realvm

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/aquifer-pool/aquifer/hugetlb/hugetlbtest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/aquifer-pool/aquifer/handler"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/wset"
)

// testLog adapts t.Logf to an io.Writer for progress notes.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// realGuest returns a restorable helloworld (captured into the default
// corpus if missing), its guest and the shim. It skips only where QEMU or
// root is truly absent.
func realGuest(t *testing.T, name string) (*corpus.Workload, *corpus.Guest, string) {
	t.Helper()
	if err := Available(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w, err := corpus.EnsureRestorable(ctx, testLog{t}, corpus.DefaultDir(corpus.KindCaptured), name)
	if err != nil {
		t.Fatal(err)
	}
	// Never overlap a capture (its page-set checks): see corpus.QEMULock.
	unlock, err := corpus.QEMULock(corpus.CacheDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	g, err := corpus.OpenGuest(corpus.CacheDir(), w.Meta.GuestKey)
	if err != nil {
		t.Fatal(err)
	}
	so, err := corpus.BuildShim(ctx, corpus.CacheDir())
	if err != nil {
		t.Fatal(err)
	}
	return w, g, so
}

// inProcess serves the VM with Aquifer's handler in this process, from
// src, recording the handshake's regions and the REMOVE ranges.
type inProcess struct {
	src  handler.Source
	mu   sync.Mutex
	regs []handshake.Region
	rm   [][2]uint64
	st   handler.Stats
}

func (p *inProcess) regions() []handshake.Region {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.regs
}

func (p *inProcess) removed() [][2]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][2]uint64(nil), p.rm...)
}

func (p *inProcess) serve(ctx context.Context, socket string) (func() (uint64, error), error) {
	l, err := handshake.Listen(socket)
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			conn, err := l.Accept(ctx)
			l.Close()
			if err != nil {
				return err
			}
			defer conn.Close()
			res, err := handshake.Receive(conn, p.src.Size(), 10*time.Second)
			if err != nil {
				return err
			}
			u := uffd.FromFd(res.UFFD)
			defer u.Close()
			w, err := handshake.WatchExit(conn, res)
			if err != nil {
				return err
			}
			defer w.Close()
			p.mu.Lock()
			p.regs = res.Regions
			p.mu.Unlock()
			h, err := handler.New(u, res.Regions, p.src, handler.Options{HangupFD: w.HangupFD, NoHangup: w.HangupFD < 0,
				OnRemove: func(start, end uint64) {
					p.mu.Lock()
					p.rm = append(p.rm, [2]uint64{start, end})
					p.mu.Unlock()
				}})
			if err != nil {
				return err
			}
			defer h.Close()
			st, err := h.Serve(ctx, w.PidFD)
			p.mu.Lock()
			p.st = st
			p.mu.Unlock()
			return err
		}()
	}()
	return func() (uint64, error) {
		select {
		case err := <-done:
			p.mu.Lock()
			defer p.mu.Unlock()
			return p.st.Faults, err
		case <-time.After(30 * time.Second):
			return 0, errors.New("in-process handler did not stop after the VM exited")
		}
	}, nil
}

func (p *inProcess) stats() handler.Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// qmpInt runs a QMP query and reads one integer field of its answer.
func qmpInt(v *corpus.VM, cmd, field string) (int64, error) {
	r, err := v.QMP(cmd, nil)
	if err != nil {
		return 0, err
	}
	var m map[string]int64
	if err := json.Unmarshal(r, &m); err != nil {
		return 0, fmt.Errorf("%s: %s: %w", cmd, r, err)
	}
	return m[field], nil
}

// setBalloon asks for a guest size and waits until the guest's balloon
// stops moving (it may stop short of the target when it cannot free more).
func setBalloon(ctx context.Context, t *testing.T, v *corpus.VM, target int64) int64 {
	if _, err := v.QMP("balloon", map[string]any{"value": target}); err != nil {
		t.Fatalf("balloon: %v", err)
	}
	last, still := int64(-1), 0
	for i := 0; i < 600 && still < 20; i++ {
		a, err := qmpInt(v, "query-balloon", "actual")
		if err != nil {
			t.Fatal(err)
		}
		if a == target {
			return a
		}
		if a == last {
			still++
		} else {
			still = 0
		}
		last = a
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return last
}

// TestBalloonRemove inflates a virtio-balloon in a real guest served by
// Aquifer's handler through the shim's uffd mode: QEMU's discard of the
// ballooned RAM must reach the handler as UFFD_EVENT_REMOVE, the removed
// pages must read back as zeros afterwards (never snapshot content, which
// the test checks is non-zero for some of them), and the guest must still
// compute correct results after the balloon deflates and it reuses them.
func TestBalloonRemove(t *testing.T) {
	w, g, so := realGuest(t, "helloworld")
	mem, err := handler.OpenMemFile(w.Mem)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	srv := &inProcess{src: mem}
	full := int64(w.Meta.MemSize)
	var checked, nonzeroInSnapshot int
	cfg := Config{Workload: w, Guest: g, Shim: so, Strategy: FirecrackerUffd, WorkDir: t.TempDir(), Serve: srv.serve,
		Timeout: 4 * time.Minute,
		AfterOutput: func(ctx context.Context, v *corpus.VM) error {
			got := setBalloon(ctx, t, v, 64<<20)
			t.Logf("balloon: guest at %d MiB of %d", got>>20, full>>20)
			rm := srv.removed()
			if len(rm) == 0 {
				return errors.New("the balloon inflated but the handler saw no REMOVE event")
			}
			regs := srv.regions()
			if len(regs) != 1 {
				return fmt.Errorf("handshake had %d regions, want 1", len(regs))
			}
			base := regs[0].BaseHostVirtAddr
			snap := mem.Bytes()
			dump := filepath.Join(t.TempDir(), "pmem")
			for _, r := range mergeRanges(rm) {
				lo, hi := (r[0]+4095)&^4095-base, r[1]&^4095-base
				if lo >= hi {
					continue
				}
				// QEMU reads guest memory itself (pmemsave): a real fault
				// in its address space, served by the handler like a vCPU's.
				// RAM is one block at guest-physical 0: address = offset.
				if _, err := v.QMP("pmemsave", map[string]any{"val": lo, "size": hi - lo, "filename": dump}); err != nil {
					return err
				}
				got, err := os.ReadFile(dump)
				if err != nil {
					return err
				}
				if uint64(len(got)) != hi-lo {
					return fmt.Errorf("pmemsave wrote %d bytes, want %d", len(got), hi-lo)
				}
				for off := lo; off < hi; off += 4096 {
					if !isZero(snap[off : off+4096]) {
						nonzeroInSnapshot++
					}
					if !isZero(got[off-lo : off-lo+4096]) {
						return fmt.Errorf("removed page at offset %#x reads back non-zero: snapshot content served into a ballooned range", off)
					}
					checked++
				}
			}
			// Give the memory back and use it: the guest must still be right.
			setBalloon(ctx, t, v, full)
			if err := v.Send("AQ-INVOKE c"); err != nil {
				return err
			}
			inv, err := corpus.WaitInvocation(ctx, v, "c", time.Minute)
			if err != nil {
				return fmt.Errorf("after the balloon: %w", err)
			}
			if want, _ := w.Expected("c"); inv.Digest != want.Digest {
				return fmt.Errorf("after the balloon: output %s (%s), want %s", inv.Digest, inv.Output, want.Digest)
			}
			return nil
		}}
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("%v (result %+v)", err, res)
	}
	st := srv.stats()
	t.Logf("REMOVE events %d over %d ranges; %d removed pages read back as zeros (%d of them non-zero in the snapshot); handler: %s",
		st.Removes, len(srv.removed()), checked, nonzeroInSnapshot, st)
	if st.Removes == 0 || checked == 0 {
		t.Fatalf("removes %d, pages checked %d", st.Removes, checked)
	}
	// One REMOVE per discard: the shim's conversion of the hole punch and
	// QEMU's own madvise must not both reach the handler (that would remove
	// every range twice). The guest itself may balloon a page again after
	// its balloon compaction moved it, which is rare.
	seen, twice := map[[2]uint64]bool{}, 0
	for _, r := range srv.removed() {
		if seen[r] {
			twice++
		}
		seen[r] = true
	}
	if twice > len(seen)/100 {
		t.Fatalf("%d of %d ranges removed twice", twice, len(seen))
	}
	if nonzeroInSnapshot == 0 {
		t.Fatal("no removed page had non-zero snapshot content: the zero check would pass even if snapshot data were served")
	}
	if st.ZeroFaults == 0 {
		t.Fatal("no fault was answered with a zero page")
	}
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// mergeRanges sorts [start, end) ranges and joins touching ones.
func mergeRanges(rs [][2]uint64) [][2]uint64 {
	slices.SortFunc(rs, func(a, b [2]uint64) int { return cmp.Compare(a[0], b[0]) })
	var out [][2]uint64
	for _, r := range rs {
		if n := len(out); n > 0 && r[0] <= out[n-1][1] {
			out[n-1][1] = max(out[n-1][1], r[1])
		} else {
			out = append(out, r)
		}
	}
	return out
}

// swapSource serves the page at victim with the content of donor: a
// handler that serves a page of another offset.
type swapSource struct {
	*handler.MemFile
	victim, donor uint64
	mu            sync.Mutex
	served        int
}

func (s *swapSource) Page(off, ps uint64) (uintptr, bool, func(), error) {
	if off == s.victim {
		s.mu.Lock()
		s.served++
		s.mu.Unlock()
		off = s.donor
	}
	return s.MemFile.Page(off, ps)
}

// corruptionVictim picks a page the invocation reads (first touch is a
// read or an instruction fetch, not a write) whose content differs from
// the next non-zero page, which serves as the donor.
func corruptionVictim(t *testing.T, w *corpus.Workload, mem []byte, kind wset.Kind) (victim, donor uint64) {
	tr, err := w.LoadEval(0)
	if err != nil {
		t.Fatal(err)
	}
	ps := uint64(tr.PageSize)
	nonzero := func(p uint64) bool { return !isZero(mem[p*ps : (p+1)*ps]) }
	ft := tr.FirstTouches()
	for _, a := range ft[len(ft)/2:] { // well into the handler, past the resume path
		if a.Kind&kind == 0 || a.Kind&wset.Write != 0 || !nonzero(a.Page) {
			continue
		}
		for d := a.Page + 1; d < uint64(len(mem))/ps; d++ {
			if nonzero(d) && !bytes.Equal(mem[a.Page*ps:(a.Page+1)*ps], mem[d*ps:(d+1)*ps]) {
				return a.Page * ps, d * ps
			}
		}
	}
	t.Fatal("no page to corrupt in the evaluation trace")
	return 0, 0
}

// TestCorruptedPageIsCaught serves one page the function reads with the
// content of another offset. The run must not report output_ok: either the
// output digest differs or the guest crashes (QEMU exits: -no-reboot) or
// hangs; the test reports which caught it.
func TestCorruptedPageIsCaught(t *testing.T) {
	w, g, so := realGuest(t, "helloworld")
	for _, k := range []struct {
		name string
		kind wset.Kind
	}{{"data", wset.Read}, {"code", wset.Exec}} {
		t.Run(k.name, func(t *testing.T) {
			mem, err := handler.OpenMemFile(w.Mem)
			if err != nil {
				t.Fatal(err)
			}
			defer mem.Close()
			victim, donor := corruptionVictim(t, w, mem.Bytes(), k.kind)
			src := &swapSource{MemFile: mem, victim: victim, donor: donor}
			srv := &inProcess{src: src}
			res, err := Run(context.Background(), Config{Workload: w, Guest: g, Shim: so, Strategy: FirecrackerUffd,
				WorkDir: t.TempDir(), Serve: srv.serve, Timeout: 45 * time.Second})
			src.mu.Lock()
			served := src.served
			src.mu.Unlock()
			if served == 0 {
				t.Fatalf("the corrupted page %#x was never served: the test proves nothing (result %+v, err %v)", victim, res, err)
			}
			if res.OutputOK || err == nil {
				t.Fatalf("page %#x served with the content of %#x, yet the run reports output_ok (output %s)", victim, donor, res.Output)
			}
			caught := "a hang past the deadline"
			switch {
			case errors.Is(err, ErrWrongOutput):
				caught = "the output digest"
			case strings.Contains(err.Error(), "qemu exited"):
				caught = "a guest crash (QEMU exited)"
			case strings.Contains(err.Error(), "AQ-FATAL"):
				caught = "the function's own exception"
			}
			t.Logf("page %#x served with the content of %#x: caught by %s: %v", victim, donor, caught, err)
		})
	}
}

// TestHugePages restores through the shim's huge mode (hugetlb, 2 MiB
// page_size in the handshake) when the host can reserve the huge pages.
func TestHugePages(t *testing.T) {
	w, g, so := realGuest(t, "helloworld")
	// Grown, never shrunk: the pool is shared with concurrent tests.
	hugetlbtest.Need(t, int(w.Meta.MemSize>>21)+8)
	mem, err := handler.OpenMemFile(w.Mem)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	srv := &inProcess{src: mem}
	res, err := Run(context.Background(), Config{Workload: w, Guest: g, Shim: so, Strategy: FirecrackerUffd,
		WorkDir: t.TempDir(), Serve: srv.serve, HugePages: true, Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatalf("%v (result %+v)", err, res)
	}
	regs := srv.regions()
	if len(regs) != 1 || regs[0].PageSize != 2<<20 {
		t.Fatalf("handshake regions %+v, want one with 2 MiB pages", regs)
	}
	t.Logf("2 MiB pages: output %s, %d faults, restore %v, end-to-end %v", res.Output, res.Faults,
		time.Duration(res.RestoreNs), time.Duration(res.EndToEndNs))
	if res.Faults == 0 || res.Faults > w.Meta.MemSize>>21 {
		t.Fatalf("%d faults for %d huge pages", res.Faults, w.Meta.MemSize>>21)
	}
}
