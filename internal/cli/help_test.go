package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestEveryFlagHasHelp walks the command tree: every command says what it
// does and every flag it offers has help text.
func TestEveryFlagHasHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Short == "" {
			t.Errorf("%s has no short help", c.CommandPath())
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if strings.TrimSpace(f.Usage) == "" {
				t.Errorf("%s --%s has no help text", c.CommandPath(), f.Name)
			}
		})
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root())
}

// TestDocumentedCommandsExist reads every command line of README.md and
// docs/*.md (fenced blocks and inline code) that runs aquifer, and checks
// that each subcommand and each --flag it names exists: a rename that
// leaves the docs behind fails here, not in a user's shell.
func TestDocumentedCommandsExist(t *testing.T) {
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md")
	checked := 0
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range codeLines(string(b)) {
			for _, inv := range invocations(line.text) {
				checked++
				if msg := checkInvocation(inv); msg != "" {
					t.Errorf("%s:%d: %q: %s", filepath.Base(file), line.no, strings.Join(inv, " "), msg)
				}
			}
			_ = i
		}
	}
	t.Logf("%d aquifer command lines checked", checked)
	if checked < 20 {
		t.Fatalf("only %d aquifer command lines found in the docs: the scanner is broken", checked)
	}
}

// TestGroupsRefuseUnknownSubcommands: a typo in a subcommand fails with a
// non-zero exit instead of printing the help and succeeding.
func TestGroupsRefuseUnknownSubcommands(t *testing.T) {
	for _, args := range [][]string{{"cxl", "inspect"}, {"pool", "list"}, {"nosuch"}} {
		if _, err := runCLI(t, args...); err == nil || !strings.Contains(err.Error(), "unknown command") {
			t.Errorf("aquifer %s: %v, want an unknown-command error", strings.Join(args, " "), err)
		}
	}
	if _, err := runCLI(t, "cxl"); err != nil {
		t.Errorf("aquifer cxl (bare) failed: %v", err)
	}
	if _, err := runCLI(t, "--log-level", "loud", "version"); err == nil {
		t.Error("--log-level loud was accepted")
	}
}

type codeLine struct {
	no   int
	text string
}

var inlineCode = regexp.MustCompile("`([^`]+)`")

// codeLines returns the lines of fenced code blocks and the inline code
// spans of the other lines, with their line numbers.
func codeLines(doc string) []codeLine {
	var out []codeLine
	fenced := false
	var cont string
	for i, l := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			cont = ""
			continue
		}
		if fenced {
			// Join continuation lines.
			if strings.HasSuffix(l, "\\") {
				cont += strings.TrimSuffix(l, "\\") + " "
				continue
			}
			out = append(out, codeLine{i + 1, cont + l})
			cont = ""
			continue
		}
		for _, m := range inlineCode.FindAllStringSubmatch(l, -1) {
			out = append(out, codeLine{i + 1, m[1]})
		}
	}
	return out
}

var shellOps = regexp.MustCompile(`\|\||&&|[;|&()` + "`" + `]|\$\(`)

// invocations splits a shell line into the aquifer commands it runs (a
// command at the start of the line or after a shell operator, behind
// environment assignments and sudo, time, nohup or exec), each as its
// words up to the next operator.
func invocations(line string) [][]string {
	if i := strings.Index(line, " #"); i >= 0 {
		line = line[:i]
	}
	if strings.HasPrefix(strings.TrimSpace(line), "#") {
		return nil
	}
	var out [][]string
	for _, seg := range shellOps.Split(line, -1) {
		words := strings.Fields(seg)
		for len(words) > 0 {
			w := words[0]
			if w == "sudo" || w == "time" || w == "nohup" || w == "exec" || w == "$" ||
				(strings.Contains(w, "=") && !strings.HasPrefix(w, "-")) {
				words = words[1:]
				continue
			}
			break
		}
		if len(words) < 2 || (words[0] != "aquifer" && !strings.HasSuffix(words[0], "/aquifer")) {
			continue
		}
		out = append(out, words[1:])
	}
	return out
}

// checkInvocation resolves the subcommands and flags of one documented
// command line; it returns what is wrong, or "".
func checkInvocation(words []string) string {
	c := root()
	i := 0
	for ; i < len(words); i++ {
		w := words[i]
		if strings.HasPrefix(w, "-") {
			break
		}
		var next *cobra.Command
		for _, s := range c.Commands() {
			if s.Name() == w || s.HasAlias(w) {
				next = s
			}
		}
		if next == nil {
			if c.HasSubCommands() && !c.Runnable() && !placeholder(w) {
				return "no subcommand " + w + " of " + c.CommandPath()
			}
			if c == root() && !placeholder(w) {
				// Prose such as "aquifer serves": not a command line.
				return ""
			}
			break
		}
		c = next
	}
	for ; i < len(words); i++ {
		w := words[i]
		if !strings.HasPrefix(w, "--") || w == "--" {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(w, "--"), "=")
		name = strings.TrimRight(name, ".,:'\"")
		if name == "" || placeholder(name) {
			continue
		}
		f := c.Flags().Lookup(name)
		if f == nil {
			f = c.InheritedFlags().Lookup(name)
		}
		if f == nil && name != "help" {
			return c.CommandPath() + " has no flag --" + name
		}
		if f != nil && f.Deprecated != "" {
			return c.CommandPath() + " --" + name + " is deprecated: " + f.Deprecated
		}
	}
	return ""
}

// placeholder reports words that stand for something (NAME, ..., <x>,
// [--flags], {a|b}) rather than being typed.
func placeholder(w string) bool {
	return strings.ContainsAny(w, "<>[]{}|.…$") || strings.ToUpper(w) == w
}
