package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aquifer-pool/aquifer/wset"
)

// runCLIErr is runCLI that also returns stderr (warnings).
func runCLIErr(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var e bytes.Buffer
	rootCmd.SetErr(&e)
	defer rootCmd.SetErr(nil)
	stdout, err = runCLI(t, args...)
	return stdout, e.String(), err
}

// writeRandomMem writes a memory file of pages 4 KiB pages, every third one
// zero, the others random from seed.
func writeRandomMem(t *testing.T, path string, pages int, seed uint64) wset.Fingerprint {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 5))
	mem := make([]byte, pages*4096)
	for p := 0; p < pages; p++ {
		if p%3 == 0 {
			continue
		}
		for i := 0; i < 4096; i += 8 {
			mem[p*4096+i] = byte(rng.Uint32()) | 1
		}
	}
	if err := os.WriteFile(path, mem, 0o644); err != nil {
		t.Fatal(err)
	}
	fp, err := wset.FingerprintFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// Acceptance (issue 19, deliverable 4): a working set recorded from another
// function with the same memory size is refused by convert, naming both
// fingerprints and the flag; its own memory converts silently;
// --allow-foreign-ws converts with a warning; an unbound working set (an
// older file) converts with a warning.
func TestConvertRefusesForeignWorkingSet(t *testing.T) {
	dir := t.TempDir()
	memA, memB := filepath.Join(dir, "fnA", "mem"), filepath.Join(dir, "fnB", "mem")
	os.MkdirAll(filepath.Dir(memA), 0o755)
	os.MkdirAll(filepath.Dir(memB), 0o755)
	const pages = 256
	fpA, fpB := writeRandomMem(t, memA, pages, 1), writeRandomMem(t, memB, pages, 2)
	rec := &wset.Trace{PageSize: 4096, Source: "aquifer handle --record"}
	for p := 1; p < pages; p += 2 {
		rec.Accesses = append(rec.Accesses, wset.Access{Page: uint64(p), Kind: wset.Read})
	}
	if err := rec.Bind(fpA); err != nil {
		t.Fatal(err)
	}
	recA := filepath.Join(dir, "fnA", "record.ws")
	if err := wset.WriteFile(recA, rec); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "img")

	out, errOut, err := runCLIErr(t, "convert", "--mem", memA, "--ws", recA, "--out", img)
	if err != nil || errOut != "" || !strings.Contains(out, fmt.Sprintf("memory xxh64 %016x, working set bound", fpA.XXH64)) {
		t.Fatalf("own memory: %v\nstdout %s\nstderr %s", err, out, errOut)
	}
	hot := hotPages(t, memA, recA, img)

	_, _, err = runCLIErr(t, "convert", "--mem", memB, "--ws", recA, "--out", img+"B")
	if err == nil {
		t.Fatal("convert accepted a working set recorded from another memory of the same size")
	}
	for _, want := range []string{recA, memB, fmt.Sprintf("%016x", fpA.XXH64), fmt.Sprintf("%016x", fpB.XXH64), "--allow-foreign-ws"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not name %q", err, want)
		}
	}
	if _, err := os.Stat(img + "B"); err == nil {
		t.Error("a refused conversion left an image")
	}
	t.Logf("refused: %v", err)

	out, errOut, err = runCLIErr(t, "convert", "--mem", memB, "--ws", recA, "--out", img+"B", "--allow-foreign-ws", "--json")
	if err != nil || !strings.Contains(errOut, "warning: working set "+recA+" was recorded from another memory") {
		t.Fatalf("--allow-foreign-ws: %v\nstderr %s", err, errOut)
	}
	var st struct {
		WorkingSet string   `json:"working_set"`
		Warnings   []string `json:"warnings"`
		HotPages   uint64   `json:"hot_pages"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.WorkingSet != "foreign" || len(st.Warnings) != 1 || st.HotPages == 0 {
		t.Fatalf("--allow-foreign-ws --json: %v %+v", err, st)
	}
	if _, err := runCLI(t, "verify", img+"B", "--mem", memB); err != nil {
		t.Fatalf("the image converted with a foreign working set does not verify: %v", err)
	}

	// An unbound working set (format version 2 without a fingerprint, and
	// a real version 1 file) converts with a warning.
	un := *rec
	un.Memory = nil
	recU := filepath.Join(dir, "unbound.ws")
	if err := wset.WriteFile(recU, &un); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = runCLIErr(t, "convert", "--mem", memA, "--ws", recU, "--out", img+"U")
	if err != nil || !strings.Contains(errOut, "warning: working set "+recU+" does not say which memory") ||
		!strings.Contains(out, "working set unbound") {
		t.Fatalf("unbound: %v\nstdout %s\nstderr %s", err, out, errOut)
	}
	if h := hotPages(t, memA, recU, img+"U"); h != hot {
		t.Errorf("unbound: %d hot pages, bound %d", h, hot)
	}
	v1 := filepath.Join(dir, "v1.ws")
	if b, err := os.ReadFile("../../wset/testdata/v1.ws"); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(v1, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mem128 := filepath.Join(dir, "mem128") // the v1 file is for 128 MiB
	if err := os.WriteFile(mem128, nil, 0o644); err != nil || os.Truncate(mem128, 128<<20) != nil {
		t.Fatal("sparse memory file")
	}
	_, errOut, err = runCLIErr(t, "convert", "--mem", mem128, "--ws", v1, "--out", img+"1")
	if err != nil || !strings.Contains(errOut, "does not say which memory") {
		t.Fatalf("version 1 file: %v\nstderr %s", err, errOut)
	}

	// ws bind binds the unbound file; then convert is silent, and another
	// memory is refused.
	out, err = runCLI(t, "ws", "bind", "--mem", memA, recU)
	if err != nil || !strings.Contains(out, "bound to "+memA) {
		t.Fatalf("ws bind: %v %s", err, out)
	}
	if _, errOut, err = runCLIErr(t, "convert", "--mem", memA, "--ws", recU, "--out", img+"U"); err != nil || errOut != "" {
		t.Fatalf("convert after ws bind: %v, stderr %q", err, errOut)
	}
	if _, err = runCLI(t, "ws", "bind", "--mem", memB, recU); err == nil || !strings.Contains(err.Error(), "bound to another memory") {
		t.Fatalf("ws bind to another memory: %v", err)
	}
	out, err = runCLI(t, "ws", "show", recA)
	if err != nil || !strings.Contains(out, fmt.Sprintf("%016x", fpA.XXH64)) {
		t.Fatalf("ws show does not name the memory: %v %s", err, out)
	}

	// ws merge refuses recordings of two memories.
	recB := filepath.Join(dir, "fnB", "record.ws")
	rb := *rec
	rb.Memory = nil
	rb.Bind(fpB)
	if err := wset.WriteFile(recB, &rb); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "ws", "merge", recA, recB, "-o", filepath.Join(dir, "m.ws")); err == nil || !strings.Contains(err.Error(), "another memory") {
		t.Fatalf("ws merge of two memories: %v", err)
	}
	if _, err := runCLI(t, "ws", "merge", recA, recA, "-o", filepath.Join(dir, "m.ws")); err != nil {
		t.Fatal(err)
	}
	if m, err := wset.ReadFile(filepath.Join(dir, "m.ws")); err != nil || m.BindingTo(fpA) != wset.Bound {
		t.Fatalf("merge of one memory's recordings is not bound to it: %v", err)
	}

	// The baselines and the hot-set analysis apply the same check.
	os.MkdirAll(filepath.Join(dir, "faasnap"), 0o755)
	for _, args := range [][]string{
		{"baseline", "reap", "--mem", memB, "--ws", recA, "--out", filepath.Join(dir, "reap.ws")},
		{"baseline", "faasnap", "--mem", memB, "--ws", recA, "--out", filepath.Join(dir, "faasnap")},
		{"ws", "hotset", "--mem", memB, "--record", recA, "--eval", recA},
	} {
		if _, _, err := runCLIErr(t, args...); err == nil || !strings.Contains(err.Error(), "--allow-foreign-ws") {
			t.Errorf("%s: %v, want a refusal", strings.Join(args[:2], " "), err)
		}
		if _, errOut, err := runCLIErr(t, append(args, "--allow-foreign-ws")...); err != nil || !strings.Contains(errOut, "used anyway") {
			t.Errorf("%s --allow-foreign-ws: %v, stderr %q", strings.Join(args[:2], " "), err, errOut)
		}
	}
}

// hotPages converts and reports the image's hot page count.
func hotPages(t *testing.T, mem, ws, img string) uint64 {
	t.Helper()
	out, _, err := runCLIErr(t, "convert", "--mem", mem, "--ws", ws, "--out", img, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		HotPages uint64 `json:"hot_pages"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	return st.HotPages
}
