package corpus

import (
	"fmt"
	"sort"
	"strings"
)

// Function is one workload of the corpus.
type Function struct {
	// Name is the file name of the handler under corpus/guest/functions.
	Name string
	// About says what the function does and which benchmark it models.
	About string
	// MemMiB is the guest memory size a deployment would give it.
	MemMiB int
	// Packages are the Debian packages the handler needs beyond python3.
	Packages []string
	// Record is the input whose invocation builds the hot set.
	Record string
	// Eval are the inputs of the evaluation traces; none equals Record.
	Eval []string
	// Source is the module of a function brought by the operator
	// (LoadFunctionFile); nil for the built-in functions, whose modules are
	// embedded from corpus/guest/functions.
	Source []byte
	// Origin is the path Source was read from ("" for built-ins).
	Origin string
}

// BuiltIn reports whether f is one of the nine built-in functions.
func (f Function) BuiltIn() bool { return f.Source == nil }

// Functions is the corpus, modelled on FunctionBench as used by REAP
// (vHive) and FaaSnap. Memory sizes follow common deployments: 256 MiB for
// small Python handlers, 512 MiB for numpy and Pillow ones.
var Functions = []Function{
	{Name: "helloworld", About: "return a greeting (vHive helloworld, FaaSnap hello-world)", MemMiB: 256},
	{Name: "json_serdes", About: "parse and re-serialise an 800-record JSON document (FunctionBench json_dumps_loads)", MemMiB: 256},
	{Name: "pyaes", About: "pure-Python AES-CTR round trip of a 1.5-2 KiB message (FunctionBench pyaes)", MemMiB: 256, Packages: []string{"python3-pyaes"}},
	{Name: "chameleon", About: "render a 60-80 row HTML table with Chameleon templates (FunctionBench chameleon)", MemMiB: 256, Packages: []string{"python3-chameleon"}},
	{Name: "image_rotate", About: "decode, rotate, flip and re-encode a 320x240 JPEG with Pillow (FunctionBench image_processing)", MemMiB: 512, Packages: []string{"python3-pil"}},
	{Name: "matmul", About: "multiply two random 160-192 square matrices with numpy (FunctionBench/FaaSnap matmul)", MemMiB: 512, Packages: []string{"python3-numpy"}},
	{Name: "lr_training", About: "train logistic regression (2000x32, 40 epochs) with numpy (vHive lr_training)", MemMiB: 512, Packages: []string{"python3-numpy"}},
	{Name: "compression", About: "zip-deflate and verify a 250-300 KB generated text in memory (FunctionBench/FaaSnap compression)", MemMiB: 256},
	{Name: "cnn_serving", About: "forward pass of a small CNN (8 MB of weights) on a 32x32 image with numpy (vHive cnn_serving)", MemMiB: 512, Packages: []string{"python3-numpy"}},
}

func init() {
	for i := range Functions {
		Functions[i].Record = "a"
		Functions[i].Eval = []string{"b", "c"}
	}
}

// Lookup returns the function with the given name.
func Lookup(name string) (Function, error) {
	for _, f := range Functions {
		if f.Name == name {
			return f, nil
		}
	}
	return Function{}, fmt.Errorf("unknown function %q (known: %s)", name, strings.Join(Names(), ", "))
}

// Names lists the function names in corpus order.
func Names() []string {
	out := make([]string, len(Functions))
	for i, f := range Functions {
		out[i] = f.Name
	}
	return out
}

// guestPackages is the union of the Debian packages every function needs,
// sorted, so that one root filesystem serves the whole corpus (the image
// only holds what the guest reads, so unused libraries cost no memory).
func guestPackages() []string {
	set := map[string]bool{"python3": true}
	for _, f := range Functions {
		for _, p := range f.Packages {
			set[p] = true
		}
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// ParseMemMiB parses a guest memory size such as "512MiB", "512M", "1GiB"
// or "1G" (binary units) into MiB. Sizes must be 64 MiB to 16 GiB.
func ParseMemMiB(s string) (int, error) {
	t := strings.TrimSpace(strings.ToLower(s))
	mult := 1
	for _, suf := range []struct {
		s string
		m int
	}{{"gib", 1024}, {"gb", 1024}, {"g", 1024}, {"mib", 1}, {"mb", 1}, {"m", 1}} {
		if strings.HasSuffix(t, suf.s) {
			t, mult = strings.TrimSuffix(t, suf.s), suf.m
			break
		}
	}
	var n int
	if _, err := fmt.Sscanf(t, "%d", &n); err != nil || fmt.Sprint(n) != t {
		return 0, fmt.Errorf("bad memory size %q (want e.g. 512MiB or 1GiB)", s)
	}
	n *= mult
	if n < 64 || n > 16<<10 {
		return 0, fmt.Errorf("memory size %q out of range 64MiB..16GiB", s)
	}
	return n, nil
}
