package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCorpusLsWithoutCaptured: `corpus ls` lists the cache's synthetic
// corpus when there is no captured one, and says what to run when there is
// neither.
func TestCorpusLsWithoutCaptured(t *testing.T) {
	t.Setenv("AQUIFER_CACHE_DIR", t.TempDir())
	if _, err := runCLI(t, "corpus", "ls"); err == nil || !strings.Contains(err.Error(), "no corpus in") ||
		!strings.Contains(err.Error(), "aquifer corpus synth") {
		t.Fatalf("ls in an empty cache: %v", err)
	}
	if _, err := runCLI(t, "corpus", "synth", "--functions", "helloworld", "--defaults", "--mem", "64MiB"); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "corpus", "ls")
	if err != nil || !strings.Contains(out, "(kind: synthetic)") || !strings.Contains(out, "helloworld") {
		t.Fatalf("ls with only the synthetic corpus: %v\n%s", err, out)
	}
	// A workload name the corpus lacks is refused before any pod starts.
	_, err = runCLI(t, "bench", "--workloads", "helloworld,mine", "--corpus", filepath.Join(os.Getenv("AQUIFER_CACHE_DIR"), "corpus", "synthetic"))
	if err == nil || !strings.Contains(err.Error(), `no workload "mine"`) || !strings.Contains(err.Error(), "--function-file FILE.py --name mine") {
		t.Fatalf("bench with an unknown workload: %v", err)
	}
}

// TestCaptureFunctionFileFlags: the function-file flags are checked before
// anything is built.
func TestCaptureFunctionFileFlags(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"corpus", "capture", "--function-file", filepath.Join(dir, "nope.py")}, "no such file"},
		{[]string{"corpus", "capture", "--function-file", filepath.Join(dir, "nope.py"), "--inputs", "a"}, "no such file"},
		{[]string{"corpus", "capture", "--function-file", "", "--name", "x"}, "--name describes a function file"},
	} {
		if _, err := runCLI(t, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error about %q", c.args, err, c.want)
		}
	}
	f := filepath.Join(dir, "f.py")
	os.WriteFile(f, []byte("def init(): pass\ndef handle(a): return a\n"), 0o644)
	if _, err := runCLI(t, "corpus", "capture", "--function-file", f, "--name", "helloworld"); err == nil || !strings.Contains(err.Error(), "built-in") {
		t.Errorf("a brought function named like a built-in: %v", err)
	}
}
