package arch

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// errStyleScope lists the packages whose error messages follow the
// convention of docs/architecture.md ("Errors"): no package-name prefix.
// A package is added here once its messages are converted.
var errStyleScope = []string{
	"control", "control/member",
	"rdma", "rdma/tcp", "rdma/emu", "rdma/wire", "rdma/verbs",
	"memnode",
	"cxl", "cxl/shm", "cxl/devdax", "cxl/pod",
	"pool", "pagerd", "embed", "restore", "snapimage", "handshake", "vmmproc", "vmstate", "pki",
	"cluster", "corpus", "realvm", "baseline", "internal/cli",
	"pager", "handler", "bench", "guest", "wset", "uffd", "offheap", "hugetlb", "diskemu", "pagestat", "scaling",
}

// errStyleSkip lists files of those packages that are converted later
// (module-relative path → why).
var errStyleSkip = map[string]string{}

// errStyleAllow lists messages that may keep a leading "word: " although
// the word is a package name (exact literal → why).
var errStyleAllow = map[string]string{}

var prefixRE = regexp.MustCompile(`^([a-z][a-z0-9_]*(?:/[a-z][a-z0-9_]*)*): `)

// modulePackageNames returns every package name and module-relative
// package path of the module.
func modulePackageNames(t *testing.T, root string) map[string]bool {
	names := map[string]bool{"aquifer": true}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if b := d.Name(); path != root && (strings.HasPrefix(b, ".") || b == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.PackageClauseOnly)
		if err != nil {
			return err
		}
		if n := f.Name.Name; n != "main" {
			names[n] = true
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		names[filepath.ToSlash(rel)] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestErrorStyle: an error message (of fmt.Errorf, errors.New or an Error
// method) names the operation and its object and does not start with a
// package name ("rdma: ", "pagerd: "); such prefixes
// stack two and three deep when errors wrap.
func TestErrorStyle(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	pkgs := modulePackageNames(t, root)
	fset := token.NewFileSet()
	checked := 0
	for _, dir := range errStyleScope {
		ents, err := os.ReadDir(filepath.Join(root, dir))
		if err != nil {
			t.Fatalf("package %s of the error-style scope: %v", dir, err)
		}
		for _, e := range ents {
			name := e.Name()
			if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
				continue
			}
			rel := dir + "/" + name
			if _, skip := errStyleSkip[rel]; skip {
				continue
			}
			f, err := parser.ParseFile(fset, filepath.Join(root, rel), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				var lit *ast.BasicLit
				switch n := n.(type) {
				case *ast.CallExpr:
					if len(n.Args) > 0 && isErrorConstructor(n.Fun) {
						lit = leadingLiteral(n.Args[0])
					}
				case *ast.ReturnStmt:
					// The message of an Error method: return "…" or
					// return fmt.Sprintf("…", …).
					if len(n.Results) == 1 && inErrorMethod(f, n) {
						lit = leadingLiteral(n.Results[0])
						if call, ok := n.Results[0].(*ast.CallExpr); ok && isSelector(call.Fun, "fmt", "Sprintf") && len(call.Args) > 0 {
							lit = leadingLiteral(call.Args[0])
						}
					}
				}
				if lit == nil {
					return true
				}
				s, err := strconv.Unquote(lit.Value)
				if err != nil {
					return true
				}
				checked++
				m := prefixRE.FindStringSubmatch(s)
				if m == nil || !pkgs[m[1]] {
					return true
				}
				if _, ok := errStyleAllow[s]; ok {
					return true
				}
				t.Errorf("%s: error message %q starts with the package name %q: name the operation and its object instead (docs/architecture.md, Errors)",
					fset.Position(lit.Pos()), s, m[1])
				return true
			})
		}
	}
	if checked < 100 {
		t.Fatalf("only %d error messages found in the scope: the walk is broken", checked)
	}
}

// isErrorConstructor reports fmt.Errorf and errors.New.
func isErrorConstructor(fun ast.Expr) bool {
	return isSelector(fun, "fmt", "Errorf") || isSelector(fun, "errors", "New")
}

func isSelector(e ast.Expr, pkg, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	x, ok := sel.X.(*ast.Ident)
	return ok && x.Name == pkg && sel.Sel.Name == name
}

// inErrorMethod reports whether ret is inside a method named Error.
func inErrorMethod(f *ast.File, ret *ast.ReturnStmt) bool {
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		if ok && fd.Recv != nil && fd.Name.Name == "Error" && fd.Body != nil && fd.Body.Pos() <= ret.Pos() && ret.End() <= fd.Body.End() {
			return true
		}
	}
	return false
}

// leadingLiteral returns the string literal an argument starts with
// ("a" or "a" + b), or nil.
func leadingLiteral(e ast.Expr) *ast.BasicLit {
	for {
		switch v := e.(type) {
		case *ast.BasicLit:
			if v.Kind == token.STRING {
				return v
			}
			return nil
		case *ast.BinaryExpr:
			if v.Op != token.ADD {
				return nil
			}
			e = v.X
		case *ast.ParenExpr:
			e = v.X
		default:
			return nil
		}
	}
}
