package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The walkthroughs of README.md and docs/*.md run as written: every fenced
// block whose info string is "sh walkthrough=NAME" is part of walkthrough
// NAME, and a walkthrough's blocks run in document order as one bash
// script (set -euo pipefail) with the freshly built aquifer on the PATH.
//
// Each script runs in mount, network and pid namespaces of its own (this
// test binary, re-executed as their init): loopback up and nothing else,
// fresh tmpfs on /run, /tmp, /dev/shm and /var/lib, a fresh /proc, HOME
// and AQUIFER_CACHE_DIR in the scratch directory. So a walkthrough may use
// the production paths it tells the reader to use (/run/aquifer/api.sock,
// /var/lib/aquifer, /tmp/c) without meeting a real daemon, another test or
// a previous run, and whatever it leaves running dies with its namespace.

// walkthroughFiles are the documents searched for walkthroughs, relative
// to the repository root.
var walkthroughFiles = []string{"README.md", "docs/*.md"}

// wantWalkthroughs names every walkthrough the documents must mark, and
// where: removing a marker (or a whole walkthrough) fails the test instead
// of silently testing less.
var wantWalkthroughs = map[string]string{
	"pod":        "README.md",
	"operations": "docs/operations.md",
	"cluster":    "docs/operations.md",
	"pods":       "docs/operations.md",
}

// walkthroughTimeout bounds one walkthrough (they take seconds).
const walkthroughTimeout = 4 * time.Minute

type walkBlock struct {
	file string
	line int // of the opening fence
	text string
}

type walkthrough struct {
	name   string
	blocks []walkBlock
}

var (
	fenceRe       = regexp.MustCompile("^(\\s*)(```+)\\s*(\\S*)(.*)$")
	walkAttrRe    = regexp.MustCompile(`^walkthrough=([a-z0-9][a-z0-9-]*)$`)
	walkShellLang = map[string]bool{"sh": true, "bash": true, "shell": true}
)

// parseWalkthroughs returns the walkthroughs marked in the markdown
// document doc (named file), adding to ws.
func parseWalkthroughs(file, doc string, ws map[string]*walkthrough) error {
	lines := strings.Split(doc, "\n")
	for i := 0; i < len(lines); i++ {
		m := fenceRe.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		indent, fence, lang, rest := m[1], m[2], m[3], strings.Fields(m[4])
		// Find the closing fence.
		end := -1
		for j := i + 1; j < len(lines); j++ {
			if t := strings.TrimSpace(lines[j]); strings.HasPrefix(t, fence) && strings.Trim(t, "`") == "" {
				end = j
				break
			}
		}
		if end < 0 {
			return fmt.Errorf("%s:%d: code block never closed", file, i+1)
		}
		name := ""
		for _, a := range rest {
			if !strings.Contains(a, "walkthrough") {
				continue
			}
			am := walkAttrRe.FindStringSubmatch(a)
			if am == nil {
				return fmt.Errorf("%s:%d: %q: mark a walkthrough block with walkthrough=NAME (lower case, digits, -)", file, i+1, a)
			}
			name = am[1]
		}
		if strings.Contains(lang, "walkthrough") {
			return fmt.Errorf("%s:%d: the info string starts with the language: ```sh walkthrough=NAME", file, i+1)
		}
		if name != "" {
			if !walkShellLang[lang] {
				return fmt.Errorf("%s:%d: walkthrough %s: a walkthrough block is sh or bash, not %q", file, i+1, name, lang)
			}
			var b strings.Builder
			for _, l := range lines[i+1 : end] {
				b.WriteString(strings.TrimPrefix(l, indent))
				b.WriteByte('\n')
			}
			w := ws[name]
			if w == nil {
				w = &walkthrough{name: name}
				ws[name] = w
			}
			if len(w.blocks) > 0 && w.blocks[0].file != file {
				return fmt.Errorf("%s:%d: walkthrough %s is already in %s: a walkthrough lives in one document", file, i+1, name, w.blocks[0].file)
			}
			w.blocks = append(w.blocks, walkBlock{file: file, line: i + 1, text: b.String()})
		}
		i = end
	}
	return nil
}

// readWalkthroughs parses every walkthrough of the repository's documents.
func readWalkthroughs(t *testing.T) map[string]*walkthrough {
	t.Helper()
	ws := map[string]*walkthrough{}
	for _, g := range walkthroughFiles {
		files, err := filepath.Glob(filepath.Join("..", "..", g))
		if err != nil || len(files) == 0 {
			t.Fatalf("no documents match %s (%v)", g, err)
		}
		sort.Strings(files)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(filepath.Join("..", ".."), f)
			if err := parseWalkthroughs(filepath.ToSlash(rel), string(b), ws); err != nil {
				t.Fatal(err)
			}
		}
	}
	return ws
}

// TestWalkthroughsMarked: every walkthrough wantWalkthroughs names is
// marked where it says, and no other (a new one is added there, so that it
// runs knowingly).
func TestWalkthroughsMarked(t *testing.T) {
	ws := readWalkthroughs(t)
	for name, file := range wantWalkthroughs {
		w := ws[name]
		switch {
		case w == nil:
			t.Errorf("walkthrough %q is not marked in %s (```sh walkthrough=%s): was the marker or the section removed?", name, file, name)
		case w.blocks[0].file != file:
			t.Errorf("walkthrough %q is in %s, want %s", name, w.blocks[0].file, file)
		case !strings.Contains(strings.Join(blockTexts(w), ""), "aquifer "):
			t.Errorf("walkthrough %q runs no aquifer command", name)
		}
	}
	for name, w := range ws {
		if _, ok := wantWalkthroughs[name]; !ok {
			t.Errorf("%s:%d: walkthrough %q is not listed in wantWalkthroughs (internal/e2e/walkthrough_test.go)", w.blocks[0].file, w.blocks[0].line, name)
		}
	}
}

// TestWalkthroughParser: the marker syntax, and its mistakes.
func TestWalkthroughParser(t *testing.T) {
	doc := "# x\n```sh walkthrough=a\necho 1\n```\ntext\n```sh\necho unmarked\n```\n" +
		"  ```bash walkthrough=a\n  echo 2\n  ```\n```text walkthrough\n```\n"
	ws := map[string]*walkthrough{}
	if err := parseWalkthroughs("d.md", strings.Replace(doc, "```text walkthrough\n```\n", "", 1), ws); err != nil {
		t.Fatal(err)
	}
	if w := ws["a"]; w == nil || len(w.blocks) != 2 || w.blocks[0].text != "echo 1\n" || w.blocks[1].text != "echo 2\n" || w.blocks[1].line != 9 {
		t.Fatalf("parsed %+v", ws["a"])
	}
	for _, bad := range []string{
		"```sh walkthrough=A\n```\n",       // upper case
		"```sh walkthrough\n```\n",         // no name
		"```text walkthrough=x\n```\n",     // not a shell
		"```walkthrough=x\n```\n",          // no language
		"```sh walkthrough=x\necho open\n", // never closed
	} {
		if err := parseWalkthroughs("d.md", bad, map[string]*walkthrough{}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	two := map[string]*walkthrough{}
	parseWalkthroughs("a.md", "```sh walkthrough=x\n```\n", two)
	if err := parseWalkthroughs("b.md", "```sh walkthrough=x\n```\n", two); err == nil {
		t.Error("one walkthrough across two documents accepted")
	}
}

const blockMark = "@@walkthrough-block"

// script is the walkthrough as one bash script: each block preceded by a
// line that names it in the output, an ERR trap that records the script
// line of a failing command, and an EXIT trap that records the block
// running when the script ended and its exit status. lines maps each
// script line (from 1) to its block and line in the block (-1: the
// harness's).
func (w *walkthrough) script() (text string, lines [][2]int) {
	var b strings.Builder
	add := func(blk, line int, s string) {
		b.WriteString(s)
		b.WriteByte('\n')
		lines = append(lines, [2]int{blk, line})
	}
	add(-1, -1, "set -euo pipefail")
	add(-1, -1, "__walk_block=0")
	add(-1, -1, `trap 'echo "$LINENO" > /run/walkthrough/errline' ERR`)
	add(-1, -1, `trap 'echo "$__walk_block $?" > /run/walkthrough/status' EXIT`)
	for i, blk := range w.blocks {
		add(-1, -1, fmt.Sprintf("__walk_block=%d; printf '\\n%s %d\\n'", i+1, blockMark, i+1))
		for j, l := range strings.Split(strings.TrimSuffix(blk.text, "\n"), "\n") {
			add(i, j, l)
		}
	}
	return b.String(), lines
}

// TestWalkthrough runs every marked walkthrough to its end.
func TestWalkthrough(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the walkthroughs run in mount, network and pid namespaces of their own, which need root (CI runs as root)")
	}
	ws := readWalkthroughs(t)
	names := make([]string, 0, len(ws))
	for n := range ws {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) { runWalkthrough(t, ws[name]) })
	}
}

func runWalkthrough(t *testing.T, w *walkthrough) {
	start := time.Now()
	out, err := execWalkthrough(t, w, walkthroughTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("walkthrough %s (%s, %d blocks) ran to its end in %v", w.name, w.blocks[0].file, len(w.blocks), time.Since(start).Round(time.Millisecond))
	if testing.Verbose() {
		t.Logf("its output:\n%s", out)
	}
}

// errNoNamespaces: this machine cannot create the namespaces.
var errNoNamespaces = errors.New("cannot create the walkthrough's namespaces")

// execWalkthrough runs w in namespaces of its own and returns its output;
// the error names the block that failed, with its text and its output.
func execWalkthrough(t *testing.T, w *walkthrough, timeout time.Duration) (string, error) {
	t.Helper()
	scratch := t.TempDir()
	for _, d := range []string{"bin", "work", "home", "cache"} {
		if err := os.Mkdir(filepath.Join(scratch, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script, lines := w.script()
	if err := os.WriteFile(filepath.Join(scratch, "script.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), walkInitEnv+"="+scratch, walkBinEnv+"="+filepath.Dir(bin))
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWNET | syscall.CLONE_NEWPID,
		Pdeathsig:  syscall.SIGKILL,
	}
	cmd.WaitDelay = 10 * time.Second
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err = cmd.Run()
	out := buf.String()
	switch {
	case errors.Is(err, syscall.EPERM):
		t.Skipf("%v: %v", errNoNamespaces, err)
	case err == nil:
		return out, nil
	case ctx.Err() != nil:
		return out, fmt.Errorf("walkthrough %s (%s) did not finish within %v; output:\n%s", w.name, w.blocks[0].file, timeout, out)
	}
	blk, rc := readWalkStatus(filepath.Join(scratch, "status"))
	if blk < 1 || blk > len(w.blocks) || rc == 0 {
		return out, fmt.Errorf("walkthrough %s (%s): %v; output:\n%s", w.name, w.blocks[0].file, err, out)
	}
	b := w.blocks[blk-1]
	// The failing command's line, from the ERR trap (a continued
	// command reports its last line).
	failed, where := -1, fmt.Sprintf("the block at %s:%d", b.file, b.line)
	if el, err := os.ReadFile(filepath.Join(scratch, "errline")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(el))); err == nil && n >= 1 && n <= len(lines) && lines[n-1][0] == blk-1 {
			failed = lines[n-1][1]
			where = fmt.Sprintf("%s:%d, in the block at %s:%d,", b.file, b.line+1+failed, b.file, b.line)
		}
	}
	return out, fmt.Errorf("walkthrough %s: %s failed (exit %d):\n%s\n--- the block's output ---\n%s\n--- the whole output ---\n%s",
		w.name, where, rc, markLine(b.text, failed), blockOutput(out, blk), out)
}

// markLine indents text, marking line n (from 0) with ">".
func markLine(text string, n int) string {
	ls := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i := range ls {
		p := "    "
		if i == n {
			p = "  > "
		}
		ls[i] = p + ls[i]
	}
	return strings.Join(ls, "\n")
}

func blockTexts(w *walkthrough) []string {
	var out []string
	for _, b := range w.blocks {
		out = append(out, b.text)
	}
	return out
}

// TestWalkthroughHarnessFails: a failing block is reported by its place
// and text, the blocks after it do not run, and a walkthrough that leaves
// a process running fails.
func TestWalkthroughHarnessFails(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the walkthroughs run in mount, network and pid namespaces of their own, which need root (CI runs as root)")
	}
	host := t.TempDir() // under the host's /tmp, which the walkthrough must not see
	w := &walkthrough{name: "broken", blocks: []walkBlock{
		{file: "x.md", line: 3, text: "echo first; aquifer version\necho \"init $(readlink /proc/1/exe), $(grep -c : /proc/net/dev) interface(s)\"\n" +
			"test -e " + host + " && echo host-tmp-seen\n"},
		{file: "x.md", line: 9, text: "test -S /run/aquifer/api.sock && echo real-daemon-seen\naquifer status\necho not-reached\n"},
		{file: "x.md", line: 20, text: "echo never\n"},
	}}
	out, err := execWalkthrough(t, w, time.Minute)
	if err == nil {
		t.Fatalf("a walkthrough whose second block fails passed:\n%s", out)
	}
	msg := err.Error()
	t.Logf("the failure as reported:\n%s", msg)
	for _, want := range []string{"x.md:11, in the block at x.md:9, failed (exit 1)", "  > aquifer status", "no daemon at /run/aquifer/api.sock"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the failure report lacks %q:\n%s", want, msg)
		}
	}
	for _, never := range []string{"not-reached", "\nnever", "real-daemon-seen"} {
		if strings.Contains(out, never) {
			t.Errorf("output has %q:\n%s", never, out)
		}
	}
	self, _ := os.Executable()
	if !strings.Contains(out, "first") || !strings.Contains(out, "init "+self+", 1 interface(s)") || strings.Contains(out, "host-tmp-seen") {
		t.Errorf("the first block did not run, or not in its own pid and network namespaces and /tmp:\n%s", out)
	}
	left := &walkthrough{name: "left", blocks: []walkBlock{{file: "y.md", line: 1, text: "sleep 600 &\n"}}}
	if out, err := execWalkthrough(t, left, time.Minute); err == nil || !strings.Contains(out, "left processes running") || !strings.Contains(out, "sleep 600") {
		t.Errorf("a walkthrough leaving sleep running: %v\n%s", err, out)
	}
}

func readWalkStatus(path string) (block, rc int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1, -1
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return -1, -1
	}
	block, _ = strconv.Atoi(f[0])
	rc, _ = strconv.Atoi(f[1])
	return block, rc
}

// blockOutput is the part of out that block n printed.
func blockOutput(out string, n int) string {
	start := fmt.Sprintf("\n%s %d\n", blockMark, n)
	i := strings.Index(out, start)
	if i < 0 {
		return out
	}
	out = out[i+len(start):]
	if j := strings.Index(out, fmt.Sprintf("\n%s %d\n", blockMark, n+1)); j >= 0 {
		out = out[:j]
	}
	return out
}

// walkInitEnv, set to the scratch directory, makes this test binary the
// init of a walkthrough's namespaces instead of running tests.
// walkBinEnv names the directory of the aquifer binary it puts on the
// PATH.
const (
	walkInitEnv = "AQUIFER_E2E_WALKTHROUGH_INIT"
	walkBinEnv  = "AQUIFER_E2E_WALKTHROUGH_BIN"
)

func init() {
	if dir := os.Getenv(walkInitEnv); dir != "" {
		os.Exit(walkInit(dir, os.Getenv(walkBinEnv)))
	}
}

// walkInit runs as pid 1 of fresh mount, network and pid namespaces: it
// sets them up, runs the walkthrough's script with bash, reaps every
// process that ends meanwhile (as an init does: cluster up's daemons are
// reparented to it), and fails if the script left anything running. When
// it returns, the kernel kills whatever is left in the pid namespace.
func walkInit(scratch, binDir string) int {
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "walkthrough namespace: %s: %v\n", what, err)
		return 125
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail("making / private", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fail("mounting /proc", err)
	}
	if err := loopbackUp(); err != nil {
		return fail("bringing lo up", err)
	}
	tmpfs := func(dir, mode string) error {
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode="+mode); err != nil {
			return fmt.Errorf("tmpfs on %s: %w", dir, err)
		}
		return nil
	}
	// The scratch directory and the binary's (under /tmp, about to be
	// covered) are bound at /run/walkthrough and its bin/ first.
	const root = "/run/walkthrough"
	if err := tmpfs("/run", "0755"); err != nil {
		return fail("setup", err)
	}
	if err := os.Mkdir(root, 0o755); err != nil {
		return fail("setup", err)
	}
	if err := unix.Mount(scratch, root, "", unix.MS_BIND, ""); err != nil {
		return fail("binding the scratch directory", err)
	}
	if err := unix.Mount(binDir, root+"/bin", "", unix.MS_BIND, ""); err != nil {
		return fail("binding the aquifer binary's directory", err)
	}
	for _, d := range [][2]string{{"/tmp", "1777"}, {"/dev/shm", "1777"}, {"/var/lib", "0755"}} {
		if err := tmpfs(d[0], d[1]); err != nil {
			return fail("setup", err)
		}
	}
	if err := os.Chdir(root + "/work"); err != nil {
		return fail("setup", err)
	}
	env := []string{
		"PATH=" + root + "/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + root + "/home",
		"AQUIFER_CACHE_DIR=" + root + "/cache",
		"TMPDIR=/tmp",
		"LANG=C.UTF-8",
		"TERM=dumb",
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		return fail("finding bash", err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fail("setup", err)
	}
	p, err := os.StartProcess(bash, []string{"bash", "--noprofile", "--norc", root + "/script.sh"},
		&os.ProcAttr{Env: env, Files: []*os.File{devnull, os.Stdout, os.Stderr}})
	if err != nil {
		return fail("starting bash", err)
	}
	code := -1
	for code < 0 {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fail("waiting for the script", err)
		}
		if pid == p.Pid {
			code = ws.ExitStatus()
			if ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
		}
	}
	// Whatever the script started must have stopped with it (a daemon
	// the walkthrough leaves running would stay on the reader's machine).
	var left []string
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		for {
			pid, err := unix.Wait4(-1, nil, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
		if left = otherProcesses(); len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "\nwalkthrough left processes running:\n  %s\n", strings.Join(left, "\n  "))
		if code == 0 {
			code = 3
		}
	}
	return code
}

// otherProcesses lists the processes of the pid namespace but this one.
func otherProcesses() []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if s := string(stat); strings.Contains(s, ") Z ") {
			continue // a zombie not yet reaped: it has ended
		}
		out = append(out, fmt.Sprintf("pid %d: %s", pid, strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ")))
	}
	return out
}

// loopbackUp sets IFF_UP on lo in this network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
