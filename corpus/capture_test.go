package corpus

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/wset"
)

// TestCaptureEndToEnd captures helloworld and json_serdes from real Linux
// guests under QEMU TCG and checks the acceptance properties:
// two traced restores of one snapshot with the same input overlap by more
// than 0.95 (page-set Jaccard), and every page whose content changed during
// an invocation is written in its trace. It needs root, apt and QEMU
// (corpus/ci-deps.sh installs them) and skips only when they are absent.
func TestCaptureEndToEnd(t *testing.T) {
	needCapture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	out := t.TempDir()
	start := time.Now()
	c, err := Capture(ctx, Options{Functions: []string{"helloworld", "json_serdes"}, Out: out, KeepPostImages: true,
		Progress: func(fn, step string, done, total int) {
			t.Logf("[%d/%d] %s %s (%v)", done, total, fn, step, time.Since(start).Round(time.Second))
		}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Kind() != KindCaptured || len(c.Workloads) != 2 {
		t.Fatalf("corpus kind %q with %d workloads, want captured with 2", c.Kind(), len(c.Workloads))
	}
	for _, w := range c.Workloads {
		t.Run(w.Name, func(t *testing.T) { checkCapturedWorkload(t, w) })
	}
}

// needCapture skips only where QEMU or apt is truly absent (or we are not
// root, which dpkg -x and chroot need); any other missing tool is a setup
// error (corpus/ci-deps.sh installs everything).
func needCapture(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-system-x86_64", "apt-get"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("real-guest capture unavailable: %s not installed (run corpus/ci-deps.sh as root)", tool)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("real-guest capture unavailable: needs root (dpkg -x, chroot calibration)")
	}
	if err := CheckHost(); err != nil {
		t.Fatal(err)
	}
}

func checkCapturedWorkload(t *testing.T, w *Workload) {
	f, err := Lookup(w.Name)
	if err != nil {
		t.Fatal(err)
	}
	m := w.Meta
	if m.MemSize != uint64(f.MemMiB)<<20 || m.Kernel == "" || m.Calibration.NsPerInsn <= 0 {
		t.Fatalf("meta: mem %d, kernel %q, ns/insn %v", m.MemSize, m.Kernel, m.Calibration.NsPerInsn)
	}
	st, err := os.Stat(w.Mem)
	if err != nil || uint64(st.Size()) != m.MemSize {
		t.Fatalf("memory image: %v, size %v", err, st)
	}
	zero, nzero, err := ZeroPages(w.Mem)
	if err != nil {
		t.Fatal(err)
	}
	// A real guest after boot + init: a good part of RAM never used (zero
	// with init_on_free=1), and a substantial part not zero.
	if frac := float64(nzero) / float64(len(zero)); frac < 0.2 || frac > 0.98 {
		t.Errorf("zero-page fraction %.3f is implausible for a real guest", frac)
	}
	rec, err := w.LoadRecord()
	if err != nil {
		t.Fatal(err)
	}
	var evals []*wset.Trace
	for i := range w.Eval {
		e, err := w.LoadEval(i)
		if err != nil {
			t.Fatal(err)
		}
		evals = append(evals, e)
	}
	repeat, err := wset.ReadFile(w.Dir + "/" + RepeatFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range append([]*wset.Trace{rec, repeat}, evals...) {
		if err := tr.Validate(); err != nil {
			t.Fatal(err)
		}
		if tr.MemSize != m.MemSize || len(tr.Accesses) < 100 {
			t.Fatalf("trace %q: mem %d, %d accesses", tr.Source, tr.MemSize, len(tr.Accesses))
		}
		kinds := wset.Kind(0)
		for _, a := range tr.Accesses {
			kinds |= a.Kind
		}
		if kinds != wset.Read|wset.Write|wset.Exec {
			t.Errorf("trace %q records kinds %v, want rwx", tr.Source, kinds)
		}
		if last := tr.Accesses[len(tr.Accesses)-1]; last.Insn == 0 || last.T <= 0 {
			t.Errorf("trace %q: last access at insn %d, T %v", tr.Source, last.Insn, last.T)
		}
	}
	checkBound(t, w)
	if repeat.Memory == nil || rec.Memory == nil || *repeat.Memory != *rec.Memory {
		t.Errorf("the repeat is bound to %v, the recording to %v", repeat.Memory, rec.Memory)
	}
	// Acceptance 1: two captures (restores) of the same input agree.
	j := Jaccard(evals[0], repeat)
	t.Logf("%s: pages touched record %d eval-1 %d repeat %d; Jaccard(eval-1, repeat) = %.4f; Jaccard(record, eval-1) = %.4f",
		w.Name, len(pageSet(rec, 0)), len(pageSet(evals[0], 0)), len(pageSet(repeat, 0)), j, Jaccard(rec, evals[0]))
	if j <= 0.95 {
		t.Errorf("%s: page-set overlap of two captures is %.4f, want > 0.95", w.Name, j)
	}
	if m.Checks == nil || m.Checks.RepeatJaccard != j {
		t.Errorf("meta.json checks %+v disagree with the recomputed overlap %.4f", m.Checks, j)
	}
	// Acceptance 2: every changed page is written in the trace. The capture
	// diffed the images before and after each invocation; recheck its
	// counts against the trace files.
	if len(m.Runs) != 2+len(w.Eval) {
		t.Fatalf("meta.json has %d runs", len(m.Runs))
	}
	for _, r := range m.Runs {
		tr, err := wset.ReadFile(w.Dir + "/" + r.File)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s %s: %d pages touched, %d written (%d by the disk device), %d changed, %d changed but unwritten, %d unexplained; handler %d insns, %.2f ms native",
			w.Name, r.File, r.Pages, r.WrittenPages, r.DeviceWrittenPages, r.ChangedPages, r.ChangedNotWritten, r.Unexplained,
			r.HandlerInsns, float64(r.NativeNs)/1e6)
		// Independent check: diff the snapshot against the image kept after
		// this invocation and look every changed page up in the trace.
		changed, err := changedPages(w.Mem, w.Dir+"/"+PostImageFile(r.File))
		if err != nil {
			t.Fatal(err)
		}
		written := pageSet(tr, wset.Write)
		after := map[uint64]bool{}
		for _, p := range r.ChangedAfterWindow {
			after[p] = true
		}
		if len(after) > 8 {
			t.Errorf("%s: %d pages changed after the window: the window ended before the invocation did", r.File, len(after))
		}
		missing := 0
		for _, p := range changed {
			if !written[p] && !after[p] { // after: the idle guest's, past the runner's end marker
				missing++
			}
		}
		if len(changed) != r.ChangedPages || missing != 0 {
			t.Errorf("%s: diff finds %d changed pages (meta %d), %d of them not written in the trace", r.File, len(changed), r.ChangedPages, missing)
		}
		if r.ChangedPages == 0 {
			t.Errorf("%s: no page changed: the diff check is vacuous", r.File)
		}
		if r.ChangedNotWritten != 0 || r.Unexplained != 0 {
			t.Errorf("%s: %d changed pages not written, %d unexplained", r.File, r.ChangedNotWritten, r.Unexplained)
		}
		if w := len(pageSet(tr, wset.Write)); w != r.WrittenPages || w < r.ChangedPages-r.ChangedNotWritten-len(r.ChangedAfterWindow) {
			t.Errorf("%s: trace has %d written pages, meta %d, changed %d", r.File, w, r.WrittenPages, r.ChangedPages)
		}
		if r.DeviceWrittenPages > r.ChangedPages/2+8 {
			t.Errorf("%s: %d of %d changed pages attributed to the disk device: the CPU trace is missing writes",
				r.File, r.DeviceWrittenPages, r.ChangedPages)
		}
	}
	if !m.Checks.AllChangedWritten {
		t.Errorf("meta.json says not every changed page was written")
	}
	// Format 2: restorable (device state kept), an expected output per input.
	if err := w.Restorable(); err != nil {
		t.Error(err)
	}
	if st, err := os.Stat(w.State); err != nil || st.Size() < 4096 {
		t.Errorf("device state %s: %v %v", w.State, err, st)
	}
	for _, r := range m.Runs {
		o, ok := w.Expected(r.Input)
		if !ok || o.Digest != r.Digest || o.Text == "" {
			t.Errorf("input %s: expected output %+v, run digest %s", r.Input, o, r.Digest)
		}
	}
}
