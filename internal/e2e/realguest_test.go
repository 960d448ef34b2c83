package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/bench"
	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/aquifer-pool/aquifer/realvm"
	"github.com/aquifer-pool/aquifer/snapimage"
	"golang.org/x/sys/unix"
)

type logWriter struct{ t *testing.T }

func (l logWriter) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// realHelloworld returns the corpus directory holding a restorable
// helloworld (captured into the default corpus if missing). It skips only
// where QEMU or root is truly absent.
func realHelloworld(t *testing.T) (string, *corpus.Workload) {
	t.Helper()
	if err := realvm.Available(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := corpus.DefaultDir(corpus.KindCaptured)
	w, err := corpus.EnsureRestorable(ctx, logWriter{t}, dir, "helloworld")
	if err != nil {
		t.Fatal(err)
	}
	// Never overlap a capture (its page-set checks): see corpus.QEMULock.
	unlock, err := corpus.QEMULock(corpus.CacheDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	return dir, w
}

func vmRun(t *testing.T, args ...string) (*realvm.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"vm", "run", "--json", "--log-level", "warn"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	runErr := cmd.Run()
	var res realvm.Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("vm run %v: %v; no JSON result (%v): %s %s", args, runErr, err, out.String(), errb.String())
	}
	return &res, runErr
}

// TestRealGuestRestores restores the real helloworld guest in QEMU through
// `aquifer vm run` with every strategy — aquifer through an embedded pod
// the command starts itself, the other pool strategies through a running
// pod (--api) — and checks the function's output each time.
func TestRealGuestRestores(t *testing.T) {
	dir, w := realHelloworld(t)
	want, _ := w.Expected(w.Meta.EvalInputs[0])
	check := func(res *realvm.Result, err error, s string) {
		t.Helper()
		if err != nil || !res.OutputOK || res.Digest != want.Digest || res.Strategy != s || res.Workload != "helloworld" {
			t.Fatalf("%s: %+v: %v", s, res, err)
		}
		if res.RestoreNs <= 0 || res.FirstOutputNs < res.RestoreNs || res.EndToEndNs < res.FirstOutputNs {
			t.Fatalf("%s: times out of order: %+v", s, res)
		}
		t.Logf("%-18s output %s restore %v first output %v end-to-end %v faults %d (%s)", s, res.Output,
			time.Duration(res.RestoreNs), time.Duration(res.FirstOutputNs), time.Duration(res.EndToEndNs), res.Faults, res.FaultsKind)
	}
	// The CI restore: helloworld through a pod the command starts.
	res, err := vmRun(t, "--workload", "helloworld", "--strategy", "aquifer", "--corpus", dir)
	check(res, err, "aquifer")
	if res.Faults == 0 || res.FaultsKind != "uffd" {
		t.Fatalf("aquifer served no faults: %+v", res)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pod, err := bench.StartPoolPod(ctx, bin, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	for _, s := range realvm.Strategies {
		if s == realvm.Aquifer {
			continue
		}
		res, err := vmRun(t, "--workload", "helloworld", "--strategy", s, "--corpus", dir, "--api", pod.API())
		check(res, err, s)
	}
	// A wrong output is a failure with a non-zero exit: a corpus whose
	// meta.json expects another result for the input.
	bad := filepath.Join(t.TempDir(), "helloworld")
	os.MkdirAll(bad, 0o755)
	ents, _ := os.ReadDir(w.Dir)
	for _, e := range ents {
		if e.Name() != corpus.MetaFile {
			os.Symlink(filepath.Join(w.Dir, e.Name()), filepath.Join(bad, e.Name()))
		}
	}
	m := w.Meta
	m.Outputs = map[string]corpus.Output{}
	for k, v := range w.Meta.Outputs {
		m.Outputs[k] = v
	}
	m.Outputs["b"] = corpus.Output{Digest: "0000000000000000", Text: "'not what it says'"}
	mb, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(bad, corpus.MetaFile), mb, 0o644)
	if res, err := vmRun(t, "--workload", "helloworld", "--strategy", "firecracker", "--corpus", filepath.Dir(bad), "--input", "b"); err == nil || res.OutputOK || res.Output == "" {
		t.Fatalf("a wrong output passed: %+v, %v", res, err)
	} else {
		t.Logf("wrong output refused: exit %v, %s", err, res.Error)
	}
	// An input the capture never ran has no expected output: refused.
	if res, err := vmRun(t, "--workload", "helloworld", "--strategy", "firecracker", "--corpus", dir, "--input", "zz"); err == nil || res.OutputOK {
		t.Fatalf("input without an expected output accepted: %+v", res)
	}
}

// TestRealGuestPoolCorruption makes the pool serve one page of a real
// guest with the content of another offset, in two places, and shows what
// catches it: in the image, the per-page digests refuse the publish; in the
// CXL tier after publishing, the pre-install's validation rejects the
// extent and the hot set comes from its RDMA copy, so the guest gets the
// right page (the run reports where its hot set came from).
func TestRealGuestPoolCorruption(t *testing.T) {
	_, w := realHelloworld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	work := t.TempDir()
	rec, err := w.LoadRecord()
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(work, "hw.img")
	if _, err := snapimage.Convert(w.Mem, img, snapimage.ConvertOptions{Trace: rec, PageSize: 4096}); err != nil {
		t.Fatal(err)
	}
	im, f, err := snapimage.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, hot, _ := im.Counts()
	seg, ps := im.Section(snapimage.SecHotSegment), uint64(im.PageSize())
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// Hot slot 1, a page the guest needs before it answers, gets the bytes
	// of hot slot hot-1.
	victim := append([]byte(nil), raw[seg.Offset+ps:seg.Offset+2*ps]...)
	donor := append([]byte(nil), raw[seg.Offset+(hot-1)*ps:seg.Offset+hot*ps]...)
	if hot < 2 || bytes.Equal(victim, donor) {
		t.Fatalf("%d hot pages; no distinct donor", hot)
	}
	pod, err := bench.StartPoolPod(ctx, bin, work, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()

	bad := filepath.Join(work, "bad.img")
	copy(raw[seg.Offset+ps:], donor)
	if err := os.WriteFile(bad, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pod.Publish(ctx, bad, "helloworld-bad-image"); err == nil || !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("publishing an image with a page of another offset: %v, want a digest mismatch", err)
	} else {
		t.Logf("image: caught at publish by the per-page digests: %v", err)
	}

	if err := pod.Publish(ctx, img, "helloworld-cxl"); err != nil {
		t.Fatal(err)
	}
	cxl := fmt.Sprintf("/dev/shm/aquifer-bench-%d-cxl", os.Getpid())
	if n := overwriteIn(t, cxl, victim, donor); n != 1 {
		t.Fatalf("hot page found %d times in the CXL region %s", n, cxl)
	}
	g, err := corpus.OpenGuest(corpus.CacheDir(), w.Meta.GuestKey)
	if err != nil {
		t.Fatal(err)
	}
	so, err := corpus.BuildShim(ctx, corpus.CacheDir())
	if err != nil {
		t.Fatal(err)
	}
	res, err := realvm.Run(ctx, realvm.Config{Workload: w, Guest: g, Shim: so, Strategy: realvm.Aquifer, WorkDir: work,
		API: pod.API(), Snapshot: "helloworld-cxl", Timeout: time.Minute})
	if err != nil {
		t.Fatalf("%v (%+v)", err, res)
	}
	if !res.OutputOK || !strings.Contains(res.HotSource, "rdma") {
		t.Fatalf("corrupted CXL page: output_ok %v with the hot set from %q: the corruption went unnoticed", res.OutputOK, res.HotSource)
	}
	t.Logf("CXL tier: caught by the pre-install's validation; hot set served from %s; output %s (ok)", res.HotSource, res.Output)
}

// overwriteIn replaces every occurrence of page in the (sparse) file with
// repl and returns how many there were.
func overwriteIn(t *testing.T, path string, page, repl []byte) int {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	n := 0
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, hole-data)
		if _, err := f.ReadAt(buf, data); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; {
			j := bytes.Index(buf[i:], page)
			if j < 0 {
				break
			}
			if _, err := f.WriteAt(repl, data+int64(i+j)); err != nil {
				t.Fatal(err)
			}
			n++
			i += j + len(page)
		}
		off = hole
	}
	return n
}
