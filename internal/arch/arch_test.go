package arch

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/aquifer-pool/aquifer/"

// rules is the layering read from docs/architecture.md.
type rules struct {
	layer map[string]int      // package (module-relative) → layer
	deny  map[string][]string // package → packages it must not import
}

var (
	layerRE = regexp.MustCompile(`^L(\d+)\s+[^:]*:\s*(.*)$`)
	denyRE  = regexp.MustCompile(`^deny\s+(\S+)\s*->\s*(.*)$`)
)

func readRules(path string) (*rules, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := &rules{layer: map[string]int{}, deny: map[string][]string{}}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "<!-- layering:begin -->":
			in = true
			continue
		case line == "<!-- layering:end -->":
			in = false
			continue
		}
		if !in || line == "" || strings.HasPrefix(line, "```") || strings.HasPrefix(line, "#") {
			continue
		}
		if m := layerRE.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			for _, p := range strings.FieldsFunc(m[2], func(r rune) bool { return r == ',' || r == ' ' }) {
				if old, dup := r.layer[p]; dup {
					return nil, fmt.Errorf("%s is in layers %d and %d", p, old, n)
				}
				r.layer[p] = n
			}
			continue
		}
		if m := denyRE.FindStringSubmatch(line); m != nil {
			r.deny[m[1]] = append(r.deny[m[1]], strings.Fields(m[2])...)
			continue
		}
		return nil, fmt.Errorf("unrecognised layering line %q", line)
	}
	if len(r.layer) == 0 {
		return nil, fmt.Errorf("no layering block in %s", path)
	}
	return r, sc.Err()
}

type pkg struct {
	ImportPath string
	Imports    []string
	GoFiles    []string
}

func listPackages(t *testing.T, root string) []pkg {
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var ps []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

func TestLayering(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	r, err := readRules(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, p := range listPackages(t, root) {
		name := strings.TrimPrefix(p.ImportPath, module)
		seen[name] = true
		me, ok := r.layer[name]
		if !ok {
			if len(p.GoFiles) == 0 {
				continue // test-only package
			}
			t.Errorf("package %s has no layer in docs/architecture.md: add it to the layering block", name)
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			dep := strings.TrimPrefix(imp, module)
			if l, ok := r.layer[dep]; ok && l >= me {
				t.Errorf("%s (layer %d) imports %s (layer %d): a package may import only lower layers", name, me, dep, l)
			}
			for _, d := range r.deny[name] {
				if dep == d || strings.HasPrefix(dep, d+"/") {
					t.Errorf("%s imports %s, which docs/architecture.md denies it", name, dep)
				}
			}
		}
	}
	var stale []string
	for name := range r.layer {
		if !seen[name] {
			stale = append(stale, name)
		}
	}
	sort.Strings(stale)
	if len(stale) > 0 {
		t.Errorf("docs/architecture.md places packages that do not exist: %v", stale)
	}
}

// TestClientLinksNoServer: a program that uses the API client must not
// link the daemon, the tiers or etcd's server.
func TestClientLinksNoServer(t *testing.T) {
	for _, p := range []string{"api/client", "bench", "pool", "pagerd"} {
		cmd := exec.Command("go", "list", "-deps", "./"+p)
		cmd.Dir = "../.."
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "go.etcd.io/etcd/server") {
				t.Errorf("%s links %s", p, dep)
				break
			}
			if p == "api/client" && strings.HasPrefix(dep, module) && dep != module+"api" && dep != module+"api/client" {
				t.Errorf("api/client links %s", dep)
			}
		}
	}
}
