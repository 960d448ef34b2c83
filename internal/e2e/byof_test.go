package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/bench"
	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/aquifer-pool/aquifer/realvm"
)

// repoRoot is the repository root (the documented commands run there).
const repoRoot = "../.."

// documentedExample returns the commands of docs/corpus.md's worked
// example of bringing a function (between the byof-example markers).
func documentedExample(t *testing.T) [][]string {
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs/corpus.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- byof-example:begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- byof-example:end -->")
	if !ok || !ok2 {
		t.Fatal("docs/corpus.md has no byof-example block")
	}
	var cmds [][]string
	for _, l := range strings.Split(block, "\n") {
		l, _, _ = strings.Cut(l, "#")
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == "aquifer" {
			cmds = append(cmds, f[1:])
		}
	}
	if len(cmds) < 3 {
		t.Fatalf("the worked example has %d commands", len(cmds))
	}
	return cmds
}

// exampleCache is an empty cache for the example, as a new user has, with
// the shared downloads, package bases and built guests of the real cache
// linked in (so that the test does not download or build them again) and
// its QEMU lock (so that the capture never overlaps other real-guest tests),
// and the TCG plugin and shim builds.
// The guest of the example's function is built in the real cache first.
func exampleCache(t *testing.T, ctx context.Context) string {
	real := corpus.CacheDir()
	f, err := corpus.LoadFunction(filepath.Join(repoRoot, "corpus/testdata/byof/logstats.py"),
		corpus.FunctionOptions{Packages: []string{"python3-yaml"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := corpus.GuestFor(ctx, real, f); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	ents, err := os.ReadDir(real)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		n := e.Name()
		if n == "debs" || n == ".qemu.lock" || strings.HasPrefix(n, "base-") || strings.HasPrefix(n, "guest-") ||
			strings.HasPrefix(n, "plugin-") || strings.HasPrefix(n, "shim-") {
			if err := os.Symlink(filepath.Join(real, n), filepath.Join(cache, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return cache
}

// TestBringYourOwnFunction runs docs/corpus.md's worked example as a new
// user would, in an empty cache: capture a function of ours that is not
// like the built-ins (YAML rules and regular expressions, python3-yaml),
// list it, restore its real guest through Aquifer and check the output,
// benchmark every strategy on it. It skips only where QEMU or root is
// absent.
func TestBringYourOwnFunction(t *testing.T) {
	if err := realvm.Available(); err != nil {
		t.Skip(err)
	}
	if err := corpus.CheckHost(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cache := exampleCache(t, ctx)
	var unlock func()
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	for _, args := range documentedExample(t) {
		capture := len(args) >= 2 && args[0] == "corpus" && args[1] == "capture"
		// Hold the QEMU lock shared outside captures (see corpus.QEMULock).
		if capture && unlock != nil {
			unlock()
			unlock = nil
		} else if !capture && unlock == nil {
			u, err := corpus.QEMULock(corpus.CacheDir(), true)
			if err != nil {
				t.Fatal(err)
			}
			unlock = u
		}
		start := time.Now()
		cmd := exec.CommandContext(ctx, bin, append(args, "--log-level", "warn")...)
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "AQUIFER_CACHE_DIR="+cache)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("aquifer %s: %v\n%s\n%s", strings.Join(args, " "), err, out.String(), tail(errb.String(), 3000))
		}
		t.Logf("aquifer %s (%v):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Second), out.String())
		checkExampleOutput(t, cache, args, out.String())
	}
	// The workload landed in the cache's corpus, with its module.
	w, err := corpus.OpenWorkload(filepath.Join(cache, "corpus", corpus.KindCaptured, "logstats"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := corpus.FunctionOf(w)
	if err != nil || f.BuiltIn() || strings.Join(w.Meta.Packages, ",") != "python3-yaml" || w.Restorable() != nil ||
		!w.Meta.Checks.AllChangedWritten || w.Meta.Checks.RepeatJaccard <= 0.95 {
		t.Fatalf("captured workload: %+v, function %+v, %v", w.Meta, f, err)
	}
	// Its guest gone from the cache, a restore recaptures it from the
	// module the workload kept (the original file is not needed).
	unlock()
	unlock = nil
	if err := os.Remove(filepath.Join(cache, "guest-"+w.Meta.GuestKey)); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "vm", "run", "--workload", "logstats", "--strategy", "firecracker", "--json", "--log-level", "warn")
	cmd.Env = append(os.Environ(), "AQUIFER_CACHE_DIR="+cache)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	runErr := cmd.Run()
	var res realvm.Result
	json.Unmarshal(out.Bytes(), &res)
	if runErr != nil || !res.OutputOK || !strings.Contains(errb.String(), "corpus: capturing logstats first (its guest") {
		t.Fatalf("vm run without the guest: %v, %+v\n%s", runErr, res, tail(errb.String(), 3000))
	}
	t.Logf("recaptured from the kept module and restored: %s = %s", res.Input, res.Output)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// checkExampleOutput checks what each documented command printed.
func checkExampleOutput(t *testing.T, cache string, args []string, out string) {
	t.Helper()
	switch {
	case args[0] == "corpus" && (args[1] == "capture" || args[1] == "ls"):
		if !strings.Contains(out, "(kind: captured)") || !strings.Contains(out, "logstats: captured, your function from ") {
			t.Fatalf("corpus %s does not list logstats as a captured function of yours:\n%s", args[1], out)
		}
	case args[0] == "vm" && args[1] == "run":
		var res realvm.Result
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("vm run printed no JSON result: %v", err)
		}
		w, err := corpus.OpenWorkload(filepath.Join(cache, "corpus", corpus.KindCaptured, "logstats"))
		if err != nil {
			t.Fatal(err)
		}
		want, ok := w.Expected(res.Input)
		if !res.OutputOK || !ok || res.Digest != want.Digest || res.Workload != "logstats" || res.Faults == 0 ||
			!strings.Contains(res.Output, "requests") {
			t.Fatalf("vm run: %+v; expected %+v", res, want)
		}
	case args[0] == "bench":
		// A row per strategy and concurrency level; bench fails on any
		// restored byte that differs from the snapshot.
		for _, s := range bench.AllStrategies {
			n := 0
			for _, l := range strings.Split(out, "\n") {
				f := strings.Fields(l)
				if len(f) > 3 && f[1] == "logstats" && (f[2] == s || strings.HasPrefix(f[2], s+"@")) {
					n++
				}
			}
			if n == 0 {
				t.Errorf("bench printed no row for %s on logstats:\n%s", s, out)
			}
		}
	}
}
