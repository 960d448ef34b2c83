package corpus

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoadFunction: what can be checked without a guest is checked when the
// file is loaded, with an error that says what to change.
func TestLoadFunction(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("word_count.py", "def init():\n    pass\n\ndef handle(arg):\n    return arg\n")
	f, err := LoadFunction(good, FunctionOptions{Packages: []string{"python3-yaml", "python3-yaml"}})
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != "word_count" || f.MemMiB != DefaultFunctionMemMiB || f.Record != "a" || strings.Join(f.Eval, ",") != "b,c" ||
		strings.Join(f.Packages, ",") != "python3-yaml" || f.BuiltIn() || f.Origin != good {
		t.Fatalf("defaults: %+v", f)
	}
	f, err = LoadFunction(good, FunctionOptions{Name: "wc-2", MemMiB: 512, Inputs: []string{"x1", "y/2"}})
	if err != nil || f.Name != "wc-2" || f.MemMiB != 512 || f.Record != "x1" || strings.Join(f.Eval, ",") != "y/2" {
		t.Fatalf("options: %+v, %v", f, err)
	}
	for _, c := range []struct {
		path string
		o    FunctionOptions
		want string
	}{
		{filepath.Join(dir, "missing.py"), FunctionOptions{}, "no such file"},
		{dir, FunctionOptions{}, "not a regular file"},
		{write("empty.py", ""), FunctionOptions{}, "empty"},
		{write("latin1.py", "s = '\xe9'\n"), FunctionOptions{}, "not UTF-8"},
		{write("my.fn.py", "x"), FunctionOptions{}, "--name"},
		{good, FunctionOptions{Name: "helloworld"}, "built-in"},
		{good, FunctionOptions{Packages: []string{"python3-yaml=6.0"}}, "not a Debian package name"},
		{good, FunctionOptions{Packages: []string{"-o"}}, "not a Debian package name"},
		{good, FunctionOptions{MemMiB: 32}, "out of range"},
		{good, FunctionOptions{Inputs: []string{"a"}}, "at least two inputs"},
		{good, FunctionOptions{Inputs: []string{"a", "b", "a"}}, "given twice"},
		{good, FunctionOptions{Inputs: []string{"a", "two words"}}, "without spaces"},
		{good, FunctionOptions{Inputs: []string{"a", "@calibrate"}}, "reserved"},
		{good, FunctionOptions{Inputs: []string{"a", strings.Repeat("x", 65)}}, "1 to 64"},
	} {
		if _, err := LoadFunction(c.path, c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadFunction(%s, %+v): %v, want an error about %q", filepath.Base(c.path), c.o, err, c.want)
		}
	}
}

// TestMissingPackages: apt's refusals become the names the operator gave.
func TestMissingPackages(t *testing.T) {
	out := "Reading package lists...\nE: Unable to locate package python3-nosuch\nE: Package 'mail-transport-agent' has no installation candidate\n"
	got := missingPackages([]byte(out))
	if len(got) != 2 || got[0] != "python3-nosuch" || !strings.HasPrefix(got[1], "mail-transport-agent (a virtual package") {
		t.Fatalf("%q", got)
	}
	// The real apt, when it is here (resolving needs no download).
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("apt-get not installed: the real resolver is not exercised")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := resolve(ctx, t.TempDir(), []string{"python3", "python3-aquifer-no-such-package"})
	if !errors.Is(err, ErrNoPackage) || !strings.Contains(err.Error(), "python3-aquifer-no-such-package") {
		t.Fatalf("resolving a package Debian does not have: %v", err)
	}
	if strings.Contains(err.Error(), "apt-get update") {
		t.Skipf("apt has no package lists here: %v", err)
	}
	t.Log(err)
}

// TestFunctionOf: a brought function is recovered from its workload, so
// that EnsureRestorable can recapture it without the original file.
func TestFunctionOf(t *testing.T) {
	dir := t.TempDir()
	src := []byte("def init():\n    pass\n\ndef handle(arg):\n    return arg\n")
	if err := os.WriteFile(filepath.Join(dir, FunctionFile), src, 0o644); err != nil {
		t.Fatal(err)
	}
	w := &Workload{Name: "echo", Dir: dir, Meta: Meta{Function: "echo", MemSize: 256 << 20, RecordInput: "p", EvalInputs: []string{"q"},
		Packages: []string{"python3-yaml"}, FunctionFile: FunctionFile, Origin: "/src/echo.py"}}
	f, err := FunctionOf(w)
	if err != nil {
		t.Fatal(err)
	}
	if f.BuiltIn() || string(f.Source) != string(src) || f.MemMiB != 256 || f.Record != "p" || f.Eval[0] != "q" || f.Packages[0] != "python3-yaml" {
		t.Fatalf("%+v", f)
	}
	if f, err := FunctionOf(&Workload{Name: "helloworld"}); err != nil || !f.BuiltIn() {
		t.Fatalf("built-in: %+v, %v", f, err)
	}
	os.Remove(filepath.Join(dir, FunctionFile))
	if _, err := FunctionOf(w); err == nil {
		t.Fatal("a workload without its module gave a function")
	}
}

// TestFunctionSpec: a brought function's guest holds only the runner and
// its module; the built-in guest's key does not move (captures reuse it).
func TestFunctionSpec(t *testing.T) {
	f := Function{Name: "echo", Packages: []string{"python3-yaml"}, Source: []byte("x")}
	s, err := functionSpec(f)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, g := range s.files {
		paths = append(paths, g.path)
	}
	if strings.Join(paths, " ") != "guest/functions/echo.py guest/init guest/runner.py" || strings.Join(s.packages, " ") != "python3 python3-yaml" {
		t.Fatalf("files %v packages %v", paths, s.packages)
	}
	k := debPkg{Name: "linux-image-x", Version: "1"}
	p := []debPkg{{Name: "python3", Version: "3.11", Arch: "amd64"}}
	f2 := f
	f2.Source = []byte("y")
	s2, _ := functionSpec(f2)
	if guestKey(k, p, s.files) == guestKey(k, p, s2.files) {
		t.Fatal("two modules share a guest key")
	}
	b, err := builtinSpec()
	if err != nil {
		t.Fatal(err)
	}
	if len(b.files) != len(Functions)+2 || b.files[0].path != "guest/functions/chameleon.py" {
		t.Fatalf("built-in guest files: %d, first %s", len(b.files), b.files[0].path)
	}
}

// TestCaptureOwnErrors: a brought function that cannot be captured gets an
// error that says why, and leaves no guest behind: a module without init()
// (refused by the native check, before any guest boots), an init() that
// raises (its traceback from the guest console), a package Debian does not
// have, and a guest that runs out of memory. All share the python3 +
// python3-yaml package base with the worked example. It needs root, apt
// and QEMU and skips only when they are absent.
func TestCaptureOwnErrors(t *testing.T) {
	needCapture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	for _, c := range []struct {
		file      string
		o         FunctionOptions
		is        error
		want      []string
		guestGone bool
	}{
		{"noinit.py", FunctionOptions{}, ErrBadFunction, []string{"it defines no init()"}, true},
		{"initfails.py", FunctionOptions{}, nil, []string{"init() raised an exception in the guest",
			`File "/aq/functions/initfails.py", line 12, in init`, "yaml.parser.ParserError: while parsing a flow sequence"}, true},
		{"noinit.py", FunctionOptions{Packages: []string{"python3-aquifer-no-such-package"}}, ErrNoPackage,
			[]string{"python3-aquifer-no-such-package"}, false},
		{"hog.py", FunctionOptions{MemMiB: 128}, ErrGuestOutOfMemory, []string{"in init() with 128 MiB", "--mem"}, true},
	} {
		t.Run(strings.TrimSuffix(c.file, ".py"), func(t *testing.T) {
			c.o.Packages = append(c.o.Packages, "python3-yaml")
			f, err := LoadFunction(filepath.Join("testdata/byof", c.file), c.o)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			out := t.TempDir()
			_, err = Capture(ctx, Options{Own: []Function{f}, Out: out})
			if err == nil {
				t.Fatal("captured")
			}
			t.Logf("%v: %v", time.Since(start).Round(time.Second), err)
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("error is not %v", c.is)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q", w)
				}
			}
			if c.guestGone {
				spec, err := functionSpec(f)
				if err != nil {
					t.Fatal(err)
				}
				// The guest of this module (whatever its key) must not
				// stay: no guest in the cache holds it.
				dirs, _ := filepath.Glob(filepath.Join(CacheDir(), "guest-*", "rootfs", "aq", "functions", f.Name+".py"))
				for _, d := range dirs {
					if b, _ := os.ReadFile(d); string(b) == string(spec.files[0].data) {
						t.Errorf("the guest of the failed capture stayed: %s", d)
					}
				}
			}
			if ents, _ := os.ReadDir(out); len(ents) > 0 {
				t.Errorf("the failed capture left %v in the corpus", ents)
			}
		})
	}
}

// TestEnsureRestorableOwn: a workload that is neither in the corpus nor
// built in is refused before any capture, with the command that brings it;
// a brought workload whose guest left the cache is not restorable as it is
// (EnsureRestorable recaptures it from its module; internal/e2e runs that).
func TestEnsureRestorableOwn(t *testing.T) {
	t.Setenv("AQUIFER_CACHE_DIR", t.TempDir())
	dir := t.TempDir()
	ctx := context.Background()
	_, err := EnsureRestorable(ctx, io.Discard, dir, "mine")
	if err == nil || !strings.Contains(err.Error(), "not a built-in function") || !strings.Contains(err.Error(), "--function-file FILE.py --name mine") {
		t.Fatalf("unknown workload: %v", err)
	}
	wd := filepath.Join(dir, "mine")
	os.MkdirAll(wd, 0o755)
	for _, f := range []string{RecordFile, EvalFile(1), StateFile, FunctionFile} {
		if err := os.WriteFile(filepath.Join(wd, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(wd, MemFile), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(filepath.Join(wd, MemFile), 64<<20)
	m := &Meta{Format: FormatVersion, Function: "mine", Kind: KindCaptured, MemSize: 64 << 20, GuestKey: "0123456789abcdef",
		RecordInput: "a", EvalInputs: []string{"b"}, State: StateFile, FunctionFile: FunctionFile, Packages: []string{"python3-yaml"}}
	if err := writeMeta(wd, m); err != nil {
		t.Fatal(err)
	}
	w, why, err := restorable(dir, "mine")
	if err != nil || w == nil || !strings.Contains(why, "its guest 0123456789abcdef is not built") {
		t.Fatalf("restorable: %v %q %v", w, why, err)
	}
	if f, err := FunctionOf(w); err != nil || f.BuiltIn() || string(f.Source) != "x" {
		t.Fatalf("FunctionOf: %+v %v", f, err)
	}
	// Without its module the workload is incomplete: an error, no capture.
	os.Remove(filepath.Join(wd, FunctionFile))
	if _, err := EnsureRestorable(ctx, io.Discard, dir, "mine"); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("workload without its module: %v", err)
	}
}

// FuzzFunctionOptions: whatever the operator passes as a name, packages or
// inputs, validation answers without panicking, and what it accepts is safe
// to use as a directory name, an apt argument and a console word.
func FuzzFunctionOptions(f *testing.F) {
	f.Add("logstats", "python3-yaml", "a,b,c", 256)
	f.Add("my-fn", "python3-numpy,libfoo1", "x,y", 512)
	f.Add("../etc", "-o,Dir=/", "a b,c", 64)
	f.Add("helloworld", "", "@calibrate,b", 16)
	f.Fuzz(func(t *testing.T, name, pkgs, inputs string, mem int) {
		ins := strings.Split(inputs, ",")
		fn := Function{Name: name, MemMiB: mem, Record: ins[0], Eval: ins[1:], Source: []byte("x")}
		if pkgs != "" {
			fn.Packages = strings.Split(pkgs, ",")
		}
		if fn.validate() != nil {
			return
		}
		if strings.ContainsAny(name, "/.") || name == "" || fn.BuiltIn() {
			t.Fatalf("accepted name %q", name)
		}
		for _, p := range fn.Packages {
			if p == "" || p[0] == '-' || strings.ContainsAny(p, " =/") {
				t.Fatalf("accepted package %q", p)
			}
		}
		for _, in := range ins {
			if in == "" || strings.ContainsAny(in, " \t\r\n,") || in[0] == '@' {
				t.Fatalf("accepted input %q", in)
			}
		}
	})
}
