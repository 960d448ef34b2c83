package corpus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// Functions brought by the operator ("bring your own function",
// docs/corpus.md): a Python module with init() and handle(arg), exactly the
// interface of the built-in functions, captured like them in a guest root
// of its own (python3 and the Debian packages it names), into the same
// corpus as the built-in workloads. The workload keeps the module
// (FunctionFile), so that it can be recaptured without the original file.

// FunctionFile is the name, in a workload directory, of the module of a
// function brought by the operator (Meta.FunctionFile).
const FunctionFile = "function.py"

// DefaultFunctionMemMiB is the guest memory of a brought function unless
// told otherwise: that of the small built-in Python handlers.
const DefaultFunctionMemMiB = 256

// DefaultInputs are the inputs of a brought function unless told
// otherwise, as for the built-ins: the first makes the recording, the
// others the evaluation traces.
var DefaultInputs = []string{"a", "b", "c"}

// maxFunctionSource bounds a module's size: data belongs in a Debian
// package or is generated at init(), as the built-ins do.
const maxFunctionSource = 1 << 20

// Errors of a brought function, for errors.Is; the messages that wrap them
// say what to change.
var (
	// ErrBadFunction: the module cannot be imported or lacks init() or
	// handle(arg).
	ErrBadFunction = errors.New("not a function module (a module defining init() and handle(arg))")
	// ErrNoPackage: Debian has no package of that name.
	ErrNoPackage = errors.New("Debian has no such package")
	// ErrGuestOutOfMemory: the guest ran out of memory.
	ErrGuestOutOfMemory = errors.New("the guest ran out of memory")
)

// FunctionOptions say how to capture a brought function; zero values take
// the defaults.
type FunctionOptions struct {
	// Name is the workload name (default: the file's name without .py).
	Name string
	// Packages are the Debian packages the module needs beyond python3.
	Packages []string
	// MemMiB is the guest memory size (default DefaultFunctionMemMiB).
	MemMiB int
	// Inputs are the recording input then the evaluation inputs (default
	// DefaultInputs); at least two, all different.
	Inputs []string
}

var (
	nameRE    = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,62}$`)
	debNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
)

// LoadFunction reads the module at path and checks what can be checked
// without a guest: a usable name, Debian package names, the memory size and
// the inputs. Whether the module defines init() and handle(arg) is checked
// in its guest root before any guest boots (Capture).
func LoadFunction(path string, o FunctionOptions) (Function, error) {
	st, err := os.Stat(path)
	if err != nil {
		return Function{}, fmt.Errorf("function file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return Function{}, fmt.Errorf("function file %s is not a regular file", path)
	}
	if st.Size() > maxFunctionSource {
		return Function{}, fmt.Errorf("function file %s is %d bytes, more than %d: generate data in init() or put it in a Debian package", path, st.Size(), maxFunctionSource)
	}
	src, err := os.ReadFile(path)
	if err != nil {
		return Function{}, fmt.Errorf("function file: %w", err)
	}
	if len(src) == 0 {
		return Function{}, fmt.Errorf("function file %s is empty: %w", path, ErrBadFunction)
	}
	if !utf8.Valid(src) {
		return Function{}, fmt.Errorf("function file %s is not UTF-8 text (a Python module)", path)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	name := o.Name
	if name == "" {
		name = strings.TrimSuffix(filepath.Base(path), ".py")
	}
	f := Function{Name: name, About: "brought by the operator: " + path, MemMiB: o.MemMiB, Source: src, Origin: path}
	if f.MemMiB == 0 {
		f.MemMiB = DefaultFunctionMemMiB
	}
	inputs := o.Inputs
	if len(inputs) == 0 {
		inputs = DefaultInputs
	}
	f.Record, f.Eval = inputs[0], append([]string(nil), inputs[1:]...)
	seen := map[string]bool{}
	for _, p := range o.Packages {
		if !seen[p] {
			seen[p] = true
			f.Packages = append(f.Packages, p)
		}
	}
	sort.Strings(f.Packages)
	return f, f.validate()
}

// validate checks a brought function's name, packages, memory and inputs.
func (f Function) validate() error {
	if !nameRE.MatchString(f.Name) {
		return fmt.Errorf("function name %q: use letters, digits, _ and - (starting with a letter, at most 63); choose one with --name", f.Name)
	}
	if _, err := Lookup(f.Name); err == nil {
		return fmt.Errorf("%s is a built-in function; choose another name with --name", f.Name)
	}
	for _, p := range f.Packages {
		if !debNameRE.MatchString(p) {
			return fmt.Errorf("%q is not a Debian package name (lower-case letters, digits, + - .; no versions)", p)
		}
	}
	if f.MemMiB < 64 || f.MemMiB > 16<<10 {
		return fmt.Errorf("memory size %d MiB out of range 64MiB..16GiB", f.MemMiB)
	}
	if len(f.Eval) == 0 {
		return fmt.Errorf("%s needs at least two inputs (the recording and one evaluation input), got %q", f.Name, f.Record)
	}
	seen := map[string]bool{}
	for _, in := range append([]string{f.Record}, f.Eval...) {
		if err := checkInput(in); err != nil {
			return err
		}
		if seen[in] {
			return fmt.Errorf("input %q is given twice: the recording and every evaluation input must differ", in)
		}
		seen[in] = true
	}
	return nil
}

// checkInput: an input travels as one word on the guest's serial console
// (AQ-INVOKE INPUT), so it is printable ASCII without spaces; "@..." is
// the runner's own (its calibration workload).
func checkInput(in string) error {
	if in == "" || len(in) > 64 {
		return fmt.Errorf("input %q: 1 to 64 characters", in)
	}
	for i := 0; i < len(in); i++ {
		if in[i] <= ' ' || in[i] > '~' || in[i] == ',' {
			return fmt.Errorf("input %q: printable ASCII without spaces or commas only (it is sent over the serial console)", in)
		}
	}
	if in[0] == '@' {
		return fmt.Errorf("input %q: inputs starting with @ are reserved for the runner", in)
	}
	return nil
}

// FunctionOf returns the function a workload was captured from: a built-in
// by name, or a brought function from the module kept in the workload.
func FunctionOf(w *Workload) (Function, error) {
	if w.Meta.FunctionFile == "" {
		return Lookup(w.Name)
	}
	src, err := os.ReadFile(filepath.Join(w.Dir, w.Meta.FunctionFile))
	if err != nil {
		return Function{}, fmt.Errorf("%s: %w", w.Name, err)
	}
	f := Function{Name: w.Name, About: "brought by the operator: " + w.Meta.Origin, MemMiB: int(w.Meta.MemSize >> 20),
		Packages: w.Meta.Packages, Record: w.Meta.RecordInput, Eval: w.Meta.EvalInputs, Source: src, Origin: w.Meta.Origin}
	if err := f.validate(); err != nil {
		return Function{}, fmt.Errorf("%s: %w", w.Dir, err)
	}
	return f, nil
}

// checkScript imports a module the way the runner does and checks the
// interface: init() callable without arguments, handle() with one.
const checkScript = `
import importlib.util, inspect, sys, traceback
name, path = sys.argv[1], sys.argv[2]
try:
    spec = importlib.util.spec_from_file_location("aqfn_" + name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
except BaseException:
    print("AQ-CHECK-FAIL importing the module failed:\n" + traceback.format_exc())
    sys.exit(2)
problems = []
for fn, args in (("init", ()), ("handle", ("x",))):
    f = getattr(mod, fn, None)
    if f is None:
        problems.append("it defines no %s()" % fn)
    elif not callable(f):
        problems.append("its %s is not a function" % fn)
    else:
        try:
            inspect.signature(f).bind(*args)
        except TypeError as e:
            problems.append("%s() cannot be called with %d argument(s): %s" % (fn, len(args), e))
        except ValueError:
            pass
if problems:
    print("AQ-CHECK-FAIL " + "; ".join(problems))
    sys.exit(3)
print("AQ-CHECK-OK")
`

// checkFunction imports f's module natively in a chroot of its guest root
// (the interpreter and libraries the guest has) and checks that it defines
// init() and handle(arg), before a guest boots: seconds instead of a boot
// under TCG. init() itself runs only in the guest.
func checkFunction(ctx context.Context, g *Guest, f Function) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "chroot", g.RootDir, "/usr/bin/python3", "-c", checkScript, f.Name, "/aq/functions/"+f.Name+".py")
	cmd.Env = nativeEnv
	out, err := cmd.CombinedOutput()
	text := strings.TrimSpace(string(out))
	if strings.HasSuffix(text, "AQ-CHECK-OK") && err == nil {
		return nil
	}
	if i := strings.Index(text, "AQ-CHECK-FAIL "); i >= 0 {
		return fmt.Errorf("%s (%s): %w: %s", f.Name, f.Origin, ErrBadFunction, strings.TrimSpace(text[i+len("AQ-CHECK-FAIL "):]))
	}
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("%s (%s): %w: importing it natively took more than %v", f.Name, f.Origin, ErrBadFunction, checkTimeout)
	}
	return fmt.Errorf("checking %s in its guest root: %v: %s", f.Name, err, text)
}

// checkTimeout bounds the native import of a brought module.
const checkTimeout = 2 * time.Minute

// oomEvidence returns the console line that shows the guest ran out of
// memory, if any: Python's MemoryError, or the kernel's OOM report or
// panic (the function runs as PID 1, which the OOM killer never picks, so
// the kernel panics: "System is deadlocked on memory").
func oomEvidence(console string) (string, bool) {
	for _, l := range strings.Split(console, " | ") {
		for _, s := range []string{"MemoryError", "Out of memory", "deadlocked on memory", "oom-kill"} {
			if strings.Contains(l, s) {
				return strings.TrimSpace(l), true
			}
		}
	}
	return "", false
}

// explain turns a guest failure during phase ("init()" or "handle(b)")
// into an error that says what happened: out of memory, or the function's
// exception with its traceback from the guest console.
func (c *capturer) explain(err error, v *VM, phase string) error {
	var gf *GuestFatal
	isFatal := errors.As(err, &gf)
	console := v.Log()
	if isFatal {
		console += " | " + gf.Text
	}
	if line, ok := oomEvidence(console); ok {
		return fmt.Errorf("%w in %s with %d MiB of RAM (capture with a larger --mem): %s",
			ErrGuestOutOfMemory, phase, c.f.MemMiB, line)
	}
	if isFatal {
		return fmt.Errorf("%s raised an exception in the guest; its traceback from the guest console:\n%s",
			phase, gf.Traceback())
	}
	return err
}
