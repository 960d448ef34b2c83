package corpus

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aquifer-pool/aquifer/wset"
)

const sampleRaw = `aqtrace 1
pages 16
armed 1000 5000
x 3 1000 5001
r 7 1010 5002
w 7 1500 5010
r 9 2000 5020
stop 3000 5100
`

func TestParseRawTrace(t *testing.T) {
	r, err := ParseRawTrace(strings.NewReader(sampleRaw))
	if err != nil {
		t.Fatal(err)
	}
	if r.Pages != 16 || r.ArmedInsn != 1000 || r.StopInsn != 3000 || len(r.Accesses) != 4 {
		t.Fatalf("parsed %+v", r)
	}
	if r.Accesses[2] != (RawAccess{Kind: wset.Write, Page: 7, Insn: 1500, Ns: 5010}) {
		t.Fatalf("access 2 = %+v", r.Accesses[2])
	}
	// insnAt interpolates between logged touches.
	if got := r.insnAt(5015); got != 1750 {
		t.Errorf("insnAt(5015) = %d, want 1750", got)
	}
	if got := r.insnAt(5060); got != 2500 {
		t.Errorf("insnAt(5060) = %d, want 2500", got)
	}
	tr := r.ToTrace(16*4096, 0.5, "test")
	if err := tr.Validate(); err != nil {
		t.Fatal(err)
	}
	if tr.Accesses[0].Insn != 0 || tr.Accesses[3].Insn != 1000 || tr.Accesses[3].T != 500 {
		t.Errorf("converted %+v", tr.Accesses)
	}
	bad := map[string]string{
		"empty":          "",
		"no header":      "pages 16\n",
		"bad kind":       "aqtrace 1\npages 16\narmed 1 1\nq 1 1 1\nstop 2 2\n",
		"page too large": "aqtrace 1\npages 16\narmed 1 1\nr 16 1 1\nstop 2 2\n",
		"before armed":   "aqtrace 1\npages 16\nr 1 1 1\n",
		"insn < armed":   "aqtrace 1\npages 16\narmed 5 1\nr 1 4 1\nstop 6 2\n",
		"no stop":        "aqtrace 1\npages 16\narmed 5 1\nr 1 6 1\n",
		"after stop":     "aqtrace 1\npages 16\narmed 5 1\nstop 6 2\nr 1 6 1\n",
		"stop < armed":   "aqtrace 1\npages 16\narmed 5 1\nstop 4 2\n",
		"not a number":   "aqtrace 1\npages x\n",
		"extra field":    "aqtrace 1\npages 16 17\n",
		"mark < armed":   "aqtrace 1\npages 16\narmed 5 1\nmark 4 2\nstop 6 2\n",
		"mark > stop":    "aqtrace 1\npages 16\narmed 5 1\nmark 7 2\nstop 6 2\n",
		"two marks":      "aqtrace 1\npages 16\narmed 5 1\nmark 5 2\nmark 6 2\nstop 6 2\n",
		"mark unarmed":   "aqtrace 1\npages 16\nmark 5 2\n",
	}
	for name, in := range bad {
		if _, err := ParseRawTrace(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted %q", name, in)
		}
	}
}

// TestParseRawTraceMark: a window the guest ended itself: the touches
// before the mark are the trace, those after it the idle guest's, and the
// window's end (End, insnAt, the window length) is the mark.
func TestParseRawTraceMark(t *testing.T) {
	in := "aqtrace 1\npages 16\narmed 100 1000\nx 1 100 1000\nw 2 200 1100\nmark 300 1200\nw 3 400 1300\nr 4 500 1400\nstop 600 1500\n"
	r, err := ParseRawTrace(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if !r.Marked || len(r.Accesses) != 2 || len(r.After) != 2 || r.After[0].Page != 3 || r.StopInsn != 600 {
		t.Fatalf("parsed %+v", r)
	}
	if i, ns := r.End(); i != 300 || ns != 1200 || windowInsns(r) != 200 {
		t.Fatalf("end %d %d, window %d", i, ns, windowInsns(r))
	}
	if got := r.insnAt(1150); got != 250 {
		t.Errorf("insnAt(1150) = %d, want 250 (between the last touch and the mark)", got)
	}
	if got := r.insnAt(1450); got != 300 {
		t.Errorf("insnAt past the mark = %d, want the mark's 300", got)
	}
	if tr := r.ToTrace(16*4096, 1, "test"); len(tr.Accesses) != 2 {
		t.Errorf("the trace holds %d accesses, want the 2 of the window", len(tr.Accesses))
	}
}

func FuzzParseRawTrace(f *testing.F) {
	f.Add(sampleRaw)
	f.Add("aqtrace 1\npages 16\narmed 100 1000\nx 1 100 1000\nmark 300 1200\nw 3 400 1300\nstop 600 1500\n")
	f.Add("aqtrace 1\npages 1\narmed 0 0\nstop 0 0\n")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRawTrace(strings.NewReader(s))
		if err != nil {
			return
		}
		tr := r.ToTrace(r.Pages*4096, 0.3, "fuzz")
		if err := tr.Validate(); err != nil {
			t.Fatalf("parsed log converts to an invalid trace: %v", err)
		}
		r.insnAt(r.ArmedNs)
		r.insnAt(r.StopNs + 1)
	})
}

func TestAddDeviceWrites(t *testing.T) {
	tr := &wset.Trace{PageSize: 4096, MemSize: 64 * 4096, Accesses: []wset.Access{
		{Page: 1, Insn: 10, T: 10, Kind: wset.Exec},
		{Page: 20, Insn: 20, T: 20, Kind: wset.Read},
		{Page: 5, Insn: 30, T: 30, Kind: wset.Read},
	}}
	// 20 is read later by the CPU; 21, 22 are read-ahead in the same run;
	// 40 is an isolated untouched page.
	addDeviceWrites(tr, []uint64{40, 22, 20, 21})
	if err := tr.Validate(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range tr.Accesses {
		got = append(got, a.Kind.String()+":"+string(rune('0'+a.Page/10))+string(rune('0'+a.Page%10)))
	}
	want := "x:01 w:20 w:21 w:22 r:20 r:05 w:40"
	if strings.Join(got, " ") != want {
		t.Fatalf("got %s, want %s", strings.Join(got, " "), want)
	}
	if tr.Accesses[1].Insn != 20 || tr.Accesses[6].Insn != 30 {
		t.Errorf("device writes placed at %+v", tr.Accesses)
	}
}

func writePages(t *testing.T, path string, pages [][]byte) {
	t.Helper()
	var b bytes.Buffer
	for _, p := range pages {
		b.Write(p)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func page(fill byte) []byte { return bytes.Repeat([]byte{fill}, pageSize) }

func TestImageHelpers(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	writePages(t, a, [][]byte{page(0), page(1), page(0), page(2), page(0)})
	c := filepath.Join(dir, "c")
	if err := copySparse(c, a); err != nil {
		t.Fatal(err)
	}
	ba, _ := os.ReadFile(a)
	bc, _ := os.ReadFile(c)
	if !bytes.Equal(ba, bc) {
		t.Fatal("sparse copy differs from the source")
	}
	zero, n, err := ZeroPages(c)
	if err != nil || n != 3 || len(zero) != 5 || zero[1] || !zero[2] {
		t.Fatalf("ZeroPages = %v %d %v", zero, n, err)
	}
	b := filepath.Join(dir, "b")
	p4 := page(0)
	p4[4095] = 9
	writePages(t, b, [][]byte{page(0), page(1), page(7), page(2), p4})
	ch, err := changedPages(a, b)
	if err != nil || len(ch) != 2 || ch[0] != 2 || ch[1] != 4 {
		t.Fatalf("changedPages = %v, %v", ch, err)
	}
	// Page 2 of b equals a "disk block", page 4 does not.
	disk := filepath.Join(dir, "disk")
	writePages(t, disk, [][]byte{page(5), page(7)})
	idx, err := newDiskIndex(disk)
	if err != nil {
		t.Fatal(err)
	}
	dev, unexplained, err := deviceWrites(b, ch, map[uint64]bool{}, idx)
	if err != nil || len(dev) != 1 || dev[0] != 2 || len(unexplained) != 1 || unexplained[0] != 4 {
		t.Fatalf("deviceWrites = %v %v %v", dev, unexplained, err)
	}
	dev, unexplained, _ = deviceWrites(b, ch, map[uint64]bool{4: true}, idx)
	if len(dev) != 1 || len(unexplained) != 0 {
		t.Fatalf("CPU-written page classified: %v %v", dev, unexplained)
	}
}

func TestParseMemMiB(t *testing.T) {
	for in, want := range map[string]int{"512MiB": 512, "512M": 512, "1GiB": 1024, "2g": 2048, "256": 256} {
		if got, err := ParseMemMiB(in); err != nil || got != want {
			t.Errorf("ParseMemMiB(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "abc", "12MiB", "1TiB", "-5M", "5.5G", "512 MiB x"} {
		if _, err := ParseMemMiB(in); err == nil {
			t.Errorf("ParseMemMiB(%q) accepted", in)
		}
	}
}

func TestSynth(t *testing.T) {
	dir := t.TempDir()
	c, err := Synth(SynthOptions{Functions: []string{"helloworld", "matmul"}, MemMiB: 64, Out: dir, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if c.Kind() != KindSynthetic || len(c.Workloads) != 2 {
		t.Fatalf("kind %s, %d workloads", c.Kind(), len(c.Workloads))
	}
	def := DefaultSynthParams(64)
	for _, w := range c.Workloads {
		if w.Meta.Synthetic == nil || w.Meta.Synthetic.Source == "" || !strings.Contains(w.Meta.Calibration.Source, "synthetic") {
			t.Fatalf("%s: meta does not say it is synthetic: %+v", w.Name, w.Meta)
		}
		s, err := Characterize(w)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%+v", s)
		if math.Abs(s.Zero-100*def.ZeroFrac) > 0.5 || math.Abs(s.Hot-100*def.HotFrac) > 0.3 {
			t.Errorf("%s: zero %.2f%% hot %.2f%%, model %.1f%% / %.1f%%", w.Name, s.Zero, s.Hot, 100*def.ZeroFrac, 100*def.HotFrac)
		}
		if math.Abs(s.EvalCoverage-100*def.EvalKeep) > 3 {
			t.Errorf("%s: hot set covers %.1f%% of eval, model %.0f%%", w.Name, s.EvalCoverage, 100*def.EvalKeep)
		}
		for i := range w.Eval {
			e, err := w.LoadEval(i)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Validate(); err != nil {
				t.Fatal(err)
			}
		}
		checkBound(t, w)
	}
	// Calibrating against a corpus reproduces its characterization.
	dir2 := t.TempDir()
	c2, err := Synth(SynthOptions{Functions: []string{"helloworld"}, Out: dir2, From: dir, Seed: 4})
	if err != nil {
		t.Fatal(err)
	}
	s1, _ := Characterize(c.Workloads[0])
	s2, _ := Characterize(c2.Workloads[0])
	if math.Abs(s1.Zero-s2.Zero) > 0.5 || math.Abs(s1.Hot-s2.Hot) > 0.3 || math.Abs(s1.TouchedCold-s2.TouchedCold) > 0.1 {
		t.Errorf("calibrated synth %+v does not follow its source %+v", s2, s1)
	}
	// Bad parameters are rejected, nothing is left behind.
	bad := def
	bad.HotFrac = 0.5
	if err := synthOne(filepath.Join(dir2, "x"), Functions[0], bad, 1); err == nil {
		t.Error("hot fraction above the non-zero share accepted")
	}
	if _, err := os.Stat(filepath.Join(dir2, "x")); err == nil {
		t.Error("rejected workload left a directory")
	}
}

func TestOpenRejectsBrokenWorkloads(t *testing.T) {
	dir := t.TempDir()
	if _, err := Synth(SynthOptions{Functions: []string{"helloworld"}, MemMiB: 64, Out: dir}); err != nil {
		t.Fatal(err)
	}
	w := filepath.Join(dir, "helloworld")
	if err := os.Truncate(filepath.Join(w, MemFile), 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "meta.json says") {
		t.Errorf("truncated image: %v", err)
	}
	if err := os.Truncate(filepath.Join(w, MemFile), 64<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatalf("restored workload: %v", err)
	}
	os.Remove(filepath.Join(w, EvalFile(2)))
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("missing eval trace: %v", err)
	}
	os.WriteFile(filepath.Join(w, MetaFile), []byte("{"), 0o644)
	if _, err := Open(dir); err == nil {
		t.Error("bad meta.json accepted")
	}
	if _, err := Open(t.TempDir()); err == nil {
		t.Error("empty corpus accepted")
	}
}

// TestFormatVersions: a format-1 captured workload (no "format", no device
// state) still opens but is not restorable, with a message saying how to
// recapture; a format-2 one with its state is; a newer format is refused.
func TestFormatVersions(t *testing.T) {
	dir := t.TempDir()
	if _, err := Synth(SynthOptions{Functions: []string{"helloworld"}, MemMiB: 64, Out: dir}); err != nil {
		t.Fatal(err)
	}
	wdir := filepath.Join(dir, "helloworld")
	w, err := OpenWorkload(wdir)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Restorable(); err == nil || !strings.Contains(err.Error(), "synthetic") {
		t.Errorf("synthetic workload restorable: %v", err)
	}
	m := w.Meta
	m.Kind = KindCaptured
	if err := writeMeta(wdir, &m); err != nil {
		t.Fatal(err)
	}
	if w, err = OpenWorkload(wdir); err != nil {
		t.Fatalf("format-1 captured workload: %v", err)
	}
	if err := w.Restorable(); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("format-1 workload: %v, want a recapture hint", err)
	}
	m.Format, m.State, m.Outputs = FormatVersion, StateFile, map[string]Output{"b": {Digest: "d"}}
	writeMeta(wdir, &m)
	if _, err := OpenWorkload(wdir); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("format 2 without its state file: %v", err)
	}
	os.WriteFile(filepath.Join(wdir, StateFile), []byte("state"), 0o644)
	if w, err = OpenWorkload(wdir); err != nil || w.Restorable() != nil {
		t.Fatalf("format-2 workload: %v", err)
	}
	if o, ok := w.Expected("b"); !ok || o.Digest != "d" {
		t.Errorf("expected output %v %v", o, ok)
	}
	m.State = "../../etc/passwd"
	writeMeta(wdir, &m)
	if _, err := OpenWorkload(wdir); err == nil || !strings.Contains(err.Error(), "file name") {
		t.Errorf("state outside the workload accepted: %v", err)
	}
	m.State, m.Format = StateFile, FormatVersion+1
	writeMeta(wdir, &m)
	if _, err := OpenWorkload(wdir); err == nil || !strings.Contains(err.Error(), "upgrade") {
		t.Errorf("newer format accepted: %v", err)
	}
}

// checkBound checks that every trace of w is bound to w's memory file.
func checkBound(t *testing.T, w *Workload) {
	t.Helper()
	fp, err := wset.FingerprintFile(w.Mem)
	if err != nil {
		t.Fatal(err)
	}
	files := append([]string{w.Record}, w.Eval...)
	for _, f := range files {
		tr, err := wset.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if b := tr.BindingTo(fp); b != wset.Bound {
			t.Errorf("%s: %s to %s (%s), want bound", f, b, w.Mem, fp)
		}
	}
}
