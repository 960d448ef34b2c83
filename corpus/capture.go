package corpus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aquifer-pool/aquifer/wset"
)

// Options configure a capture.
type Options struct {
	// Functions are the built-in functions to capture; empty means all of
	// them, unless Own is set.
	Functions []string
	// Own are functions brought by the operator (LoadFunction), each
	// captured in a guest root of its own.
	Own []Function
	// MemMiB overrides every function's guest memory size when > 0.
	MemMiB int
	// Out is the corpus directory (default DefaultDir("captured")).
	Out string
	// Cache holds downloads, the built guest and the plugin (default CacheDir()).
	Cache string
	// Force recaptures functions already present in Out.
	Force bool
	// KeepPostImages keeps, beside each trace X.ws, the memory image after
	// that invocation as X.post.mem (sparse), so that a test can diff it
	// against the snapshot independently of the capture's own check.
	KeepPostImages bool
	// Progress, when set, is called as work advances: step is a short
	// label, done/total count steps over the whole capture.
	Progress func(fn, step string, done, total int)
}

// stepsPerFunction is boot + one step per traced run (record, 2 evals,
// repeat) + calibration.
const stepsPerFunction = 6

// Capture captures the requested functions and returns the corpus.
func Capture(ctx context.Context, o Options) (*Corpus, error) {
	if err := CheckHost(); err != nil {
		return nil, err
	}
	if o.Cache == "" {
		o.Cache = CacheDir()
	}
	if o.Out == "" {
		o.Out = DefaultDir(KindCaptured)
	}
	names := o.Functions
	if len(names) == 0 && len(o.Own) == 0 {
		names = Names()
	}
	var fns []Function
	for _, n := range names {
		f, err := Lookup(n)
		if err != nil {
			return nil, err
		}
		fns = append(fns, f)
	}
	guests := 0
	if len(fns) > 0 {
		guests = 1 // the built-ins share one
	}
	for _, f := range o.Own {
		if err := f.validate(); err != nil {
			return nil, err
		}
		for _, g := range fns {
			if g.Name == f.Name {
				return nil, fmt.Errorf("two functions named %s", f.Name)
			}
		}
		fns = append(fns, f)
		guests++
	}
	for i := range fns {
		if o.MemMiB > 0 {
			fns[i].MemMiB = o.MemMiB
		}
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	unlockQEMU, err := QEMULock(o.Cache, false)
	if err != nil {
		return nil, err
	}
	defer unlockQEMU()
	total := len(fns)*stepsPerFunction + guests + 1
	done := 0
	progress := func(fn, step string) {
		if o.Progress != nil {
			o.Progress(fn, step, done, total)
		}
	}
	progress("", "building the TCG plugin")
	so, err := BuildPlugin(ctx, o.Cache)
	if err != nil {
		return nil, err
	}
	done++
	qemuVersion := ""
	if out, err := exec.Command("qemu-system-x86_64", "--version").Output(); err == nil {
		qemuVersion = strings.SplitN(string(out), "\n", 2)[0]
	}
	var builtin *Guest
	for _, f := range fns {
		g := builtin
		if g == nil || !f.BuiltIn() {
			progress(f.Name, "building guest")
			if g, err = GuestFor(ctx, o.Cache, f); err != nil {
				return nil, fmt.Errorf("building the guest of %s: %w", f.Name, err)
			}
			if f.BuiltIn() {
				builtin = g
			} else if err := checkFunction(ctx, g, f); err != nil {
				dropGuest(o, g)
				return nil, err
			}
			done++
		}
		dir := filepath.Join(o.Out, f.Name)
		if !o.Force {
			if w, err := OpenWorkload(dir); err == nil && upToDate(w, f, g) {
				slog.Info("corpus: reusing captured workload", "function", f.Name, "dir", dir)
				done += stepsPerFunction
				progress(f.Name, "cached")
				continue
			}
		}
		c := &capturer{g: g, plugin: so, f: f, out: o.Out, qemu: qemuVersion, keepPost: o.KeepPostImages,
			progress: func(step string) { progress(f.Name, step) }, step: func() { done++ }}
		if err := c.run(ctx); err != nil {
			if !f.BuiltIn() {
				dropGuest(o, g)
			}
			return nil, fmt.Errorf("capturing %s: %w", f.Name, err)
		}
	}
	progress("", "done")
	return Open(o.Out)
}

// dropGuest removes the guest of a brought function whose capture failed,
// when this capture built it and no workload in the corpus uses it: every
// edit of a module is another guest (~110 MB: its root image, the kernel,
// hard links into the package base), and the broken ones would
// pile up in the cache.
func dropGuest(o Options, g *Guest) {
	if !g.built {
		return
	}
	if c, err := Open(o.Out); err == nil {
		for _, w := range c.Workloads {
			if w.Meta.GuestKey == g.Key {
				return
			}
		}
	}
	unlock, err := lockCache(o.Cache)
	if err != nil {
		return
	}
	defer unlock()
	os.Remove(filepath.Join(g.Dir, "complete")) // first: no half-removed guest opens
	os.RemoveAll(g.Dir)
}

// upToDate reports whether workload w is a capture of f in guest g that a
// new capture would reproduce: same format, guest (packages, helper files
// and, for a brought function, its module), memory size and inputs.
func upToDate(w *Workload, f Function, g *Guest) bool {
	return w.Kind == KindCaptured && w.Meta.Format == FormatVersion && w.Meta.GuestKey == g.Key &&
		w.Meta.MemSize == uint64(f.MemMiB)<<20 && w.Meta.RecordInput == f.Record &&
		strings.Join(w.Meta.EvalInputs, ",") == strings.Join(f.Eval, ",") && (w.Meta.FunctionFile != "") == !f.BuiltIn()
}

type capturer struct {
	g        *Guest
	plugin   string
	f        Function
	out      string
	qemu     string
	progress func(step string)
	step     func()

	work     string // scratch dir (sockets, state, logs)
	shm      string // prefix of RAM files under /dev/shm
	snapshot string // staged memory image
	state    string // device state
	disk     *diskIndex
	keepPost bool
}

// runResult is one traced invocation before calibration.
type runResult struct {
	input   string
	raw     *RawTrace
	changed []uint64
	guestNs int64
	digest  string
	// dev are pages written by the disk device; unexplained changed pages
	// written neither by the vCPU nor by a device (a tracing failure).
	dev, unexplained []uint64
	// afterWritten are pages first written after the window (the idle
	// guest), not in the trace.
	afterWritten map[uint64]bool
	post         string // kept image after the invocation, if asked
	output       string // the runner's AQ-OUT text
	doneNs       uint64
	handlerI     uint64
}

// run captures one function as a sequence of steps: stage a scratch
// directory, boot to the snapshot point, trace every input, calibrate,
// convert and check, then move the workload into place.
func (c *capturer) run(ctx context.Context) error {
	staging, cleanup, err := c.stage()
	if err != nil {
		return err
	}
	defer cleanup()

	c.progress("boot + init")
	initNs, err := c.boot(ctx)
	if err != nil {
		return err
	}
	c.step()

	inputs, runs, err := c.traceInputs(ctx)
	if err != nil {
		return err
	}

	c.progress("native calibration")
	native, cal, err := c.calibrate(ctx, inputs, runs)
	if err != nil {
		return err
	}
	c.step()

	meta, err := c.convert(staging, runs, native, cal, initNs)
	if err != nil {
		return err
	}
	if err := os.Rename(c.state, filepath.Join(staging, StateFile)); err != nil {
		return err
	}
	if !c.f.BuiltIn() {
		if err := writeFileAtomic(filepath.Join(staging, FunctionFile), c.f.Source); err != nil {
			return err
		}
		meta.FunctionFile, meta.Origin = FunctionFile, c.f.Origin
	}
	os.RemoveAll(c.work)
	if err := writeMeta(staging, meta); err != nil {
		return err
	}
	if err := c.install(staging); err != nil {
		return err
	}
	slog.Info("corpus: captured", "function", c.f.Name, "dir", filepath.Join(c.out, c.f.Name),
		"repeat_jaccard", fmt.Sprintf("%.3f", meta.Checks.RepeatJaccard),
		"all_changed_written", meta.Checks.AllChangedWritten, "ns_per_insn", fmt.Sprintf("%.4g", cal.NsPerInsn))
	return nil
}

// stage creates the staging directory (renamed into place at the end) with
// its scratch subdirectory, and names the /dev/shm RAM files; cleanup
// removes whatever is left of both.
func (c *capturer) stage() (staging string, cleanup func(), err error) {
	staging, err = os.MkdirTemp(c.out, "."+c.f.Name+".tmp-")
	if err != nil {
		return "", nil, err
	}
	c.shm = fmt.Sprintf("/dev/shm/aquifer-corpus-%d-%s", os.Getpid(), c.f.Name)
	cleanup = func() {
		os.RemoveAll(staging)
		m, _ := filepath.Glob(c.shm + "*")
		for _, p := range m {
			os.Remove(p)
		}
	}
	c.work = filepath.Join(staging, "work")
	if err := os.MkdirAll(c.work, 0o755); err != nil {
		cleanup()
		return "", nil, err
	}
	c.snapshot = filepath.Join(staging, MemFile)
	c.state = filepath.Join(c.work, "devstate")
	return staging, cleanup, nil
}

// traceInputs runs the traced invocations: record, evals, then a repeat
// of the first eval. It returns the inputs in run order with their runs.
func (c *capturer) traceInputs(ctx context.Context) ([]string, []*runResult, error) {
	inputs := append(append([]string{c.f.Record}, c.f.Eval...), c.f.Eval[0])
	var runs []*runResult
	for i, in := range inputs {
		label := "record"
		switch {
		case i == len(inputs)-1:
			label = "repeat"
		case i > 0:
			label = fmt.Sprintf("eval-%d", i)
		}
		c.progress("trace " + label + " (input " + in + ")")
		r, err := c.traced(ctx, in, i)
		if err != nil {
			return nil, nil, fmt.Errorf("%s run: %w", label, err)
		}
		runs = append(runs, r)
		c.step()
	}
	return inputs, runs, nil
}

// calibrate times every input natively (checking that the chroot computes
// the guest's answer) and derives ns per guest instruction; handlers too
// short for a stable ratio use the runner's calibration workload instead.
func (c *capturer) calibrate(ctx context.Context, inputs []string, runs []*runResult) (map[string]int64, Calibration, error) {
	native := map[string]int64{}
	for _, in := range uniq(inputs) {
		ns, digest, err := NativeTime(ctx, c.g, c.f.Name, in)
		if err != nil {
			return nil, Calibration{}, err
		}
		native[in] = ns
		for _, r := range runs {
			if r.input == in && r.digest != digest {
				return nil, Calibration{}, fmt.Errorf("native run of input %s returned %s, the guest %s: the chroot and the guest disagree", in, digest, r.digest)
			}
		}
	}
	var natSum int64
	var insSum uint64
	for _, r := range runs {
		natSum += native[r.input]
		insSum += r.handlerI
	}
	cal := Calibration{NativeNs: natSum, GuestInsns: insSum,
		Source: "native handler time in a chroot of the guest root filesystem / guest handler instructions, this function"}
	if insSum > 0 {
		cal.NsPerInsn = float64(natSum) / float64(insSum)
	}
	if natSum >= int64(len(runs))*int64(time.Millisecond) && insSum > 0 {
		return native, cal, nil
	}
	// The handler is too short for a stable ratio (helloworld): use the
	// guest's built-in calibration workload on the same snapshot.
	c.progress("calibration workload")
	r, err := c.traced(ctx, calibrateInput, len(inputs))
	if err != nil {
		return nil, Calibration{}, fmt.Errorf("calibration run: %w", err)
	}
	ns, _, err := NativeTime(ctx, c.g, c.f.Name, calibrateInput)
	if err != nil {
		return nil, Calibration{}, err
	}
	if r.handlerI == 0 {
		return nil, Calibration{}, errors.New("calibration run recorded no instructions")
	}
	return native, Calibration{NsPerInsn: float64(ns) / float64(r.handlerI), NativeNs: ns, GuestInsns: r.handlerI,
		Source: "runner calibration workload (handler shorter than 1 ms): native time in a chroot / guest instructions"}, nil
}

// convert turns every run into its trace file in staging (device writes
// added, validated), checks that every changed page was written and the
// repeat overlaps its eval, and returns the workload's meta.
func (c *capturer) convert(staging string, runs []*runResult, native map[string]int64, cal Calibration, initNs int64) (*Meta, error) {
	memSize := uint64(c.f.MemMiB) << 20
	meta := &Meta{Format: FormatVersion, Function: c.f.Name, Kind: KindCaptured, MemSize: memSize, Kernel: c.g.KernelPackage,
		Cmdline: cmdline(c.f.Name), QEMU: c.qemu, GuestKey: c.g.Key, CapturedAt: time.Now().UTC().Truncate(time.Second),
		RecordInput: c.f.Record, EvalInputs: c.f.Eval, InitNs: initNs, Calibration: cal, State: StateFile,
		Outputs: map[string]Output{}, Packages: c.f.Packages}
	checks := &Checks{AllChangedWritten: true}
	// Every trace is bound to the snapshot memory it was recorded from.
	fp, err := wset.FingerprintFile(c.snapshot)
	if err != nil {
		return nil, err
	}
	var traces []*wset.Trace
	for i, r := range runs {
		file := RecordFile
		switch {
		case i == len(runs)-1:
			file = RepeatFile
		case i > 0:
			file = EvalFile(i)
		}
		src := fmt.Sprintf("corpus capture: %s input=%s (%s; aqtrace TCG plugin; T = insn x %.4g ns, calibrated)",
			c.f.Name, r.input, KindCaptured, cal.NsPerInsn)
		t := r.raw.ToTrace(memSize, cal.NsPerInsn, src)
		dev, unexplained := r.dev, r.unexplained
		addDeviceWrites(t, dev)
		if len(dev) > 0 {
			t.Source += fmt.Sprintf("; %d device (virtio-blk DMA) writes found by image diff", len(dev))
		}
		if err := t.Bind(fp); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if err := wset.WriteFile(filepath.Join(staging, file), t); err != nil {
			return nil, err
		}
		traces = append(traces, t)
		if r.post != "" {
			if err := os.Rename(r.post, filepath.Join(staging, PostImageFile(file))); err != nil {
				return nil, err
			}
		}
		written := pageSet(t, wset.Write)
		notWritten, after := 0, []uint64(nil)
		for _, p := range r.changed {
			switch {
			case written[p]:
			case r.afterWritten[p]:
				after = append(after, p)
			default:
				notWritten++
			}
		}
		if len(unexplained) > 0 || notWritten > 0 {
			checks.AllChangedWritten = false
			slog.Warn("corpus: pages changed but neither written by the vCPU nor read from disk", "function", c.f.Name, "file", file,
				"count", len(unexplained), "first", unexplained[:min(8, len(unexplained))])
		}
		meta.Runs = append(meta.Runs, RunInfo{File: file, Input: r.input, GuestNs: r.guestNs, NativeNs: native[r.input],
			HandlerInsns: r.handlerI, WindowInsns: windowInsns(r.raw), Accesses: len(t.Accesses), EndedByGuest: r.raw.Marked,
			ChangedAfterWindow: after,
			Pages:              len(pageSet(t, 0)), WrittenPages: len(written), DeviceWrittenPages: len(dev), ChangedPages: len(r.changed),
			ChangedNotWritten: notWritten, Unexplained: len(unexplained), Digest: r.digest})
		if o, ok := meta.Outputs[r.input]; ok && o.Digest != r.digest {
			return nil, fmt.Errorf("input %s returned %s in one run and %s in another: the function is not deterministic", r.input, o.Digest, r.digest)
		}
		meta.Outputs[r.input] = Output{Digest: r.digest, Text: r.output}
	}
	checks.RepeatJaccard = Jaccard(traces[1], traces[len(traces)-1])
	meta.Checks = checks
	return meta, nil
}

// install moves the staged workload into place, replacing an older one.
func (c *capturer) install(staging string) error {
	final := filepath.Join(c.out, c.f.Name)
	old := final + ".old"
	os.RemoveAll(old)
	if _, err := os.Stat(final); err == nil {
		if err := os.Rename(final, old); err != nil {
			return err
		}
	}
	if err := os.Rename(staging, final); err != nil {
		return err
	}
	os.RemoveAll(old)
	return nil
}

// calibrateInput asks the runner for its built-in calibration workload.
const calibrateInput = "@calibrate"

func uniq(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// boot starts the guest, waits for the snapshot point, pauses it and writes
// the snapshot (memory image + device state). It returns init()'s guest time.
func (c *capturer) boot(ctx context.Context) (int64, error) {
	memPath := c.shm + "-boot.mem"
	os.Remove(memPath)
	// NoReboot: a kernel panic (out of memory: the runner is PID 1, which
	// the OOM killer never picks) ends QEMU instead of booting again.
	v, err := StartVM(ctx, VMConfig{Guest: c.g, Fn: c.f.Name, MemMiB: c.f.MemMiB, MemPath: memPath, WorkDir: c.work, NoReboot: true})
	if err != nil {
		return 0, err
	}
	defer v.Quit()
	line, err := v.waitMarker(ctx, "AQ-READY", 5*time.Minute)
	if err != nil {
		return 0, c.explain(err, v, "init()")
	}
	if err := v.Stop(); err != nil {
		return 0, err
	}
	if err := v.saveState(ctx, c.state); err != nil {
		return 0, err
	}
	if err := copySparse(c.snapshot, memPath); err != nil {
		return 0, err
	}
	f := strings.Fields(line)
	var initNs int64
	if len(f) == 2 {
		initNs, _ = strconv.ParseInt(f[1], 10, 64)
	}
	return initNs, nil
}

// traced restores the snapshot, arms the plugin, runs one invocation and
// returns the plugin log and the pages whose content changed.
func (c *capturer) traced(ctx context.Context, input string, n int) (*runResult, error) {
	memPath := fmt.Sprintf("%s-run%d.mem", c.shm, n)
	if err := copySparse(memPath, c.snapshot); err != nil {
		return nil, err
	}
	defer os.Remove(memPath)
	ctl := filepath.Join(c.work, fmt.Sprintf("ctl%d", n))
	out := filepath.Join(c.work, fmt.Sprintf("trace%d.txt", n))
	pages := uint64(c.f.MemMiB) << 20 / pageSize
	plugin := fmt.Sprintf("%s,ctl=%s,out=%s,mem=%s,pages=%d", c.plugin, ctl, out, memPath, pages)
	v, err := StartVM(ctx, VMConfig{Guest: c.g, Fn: c.f.Name, MemMiB: c.f.MemMiB, MemPath: memPath,
		WorkDir: c.work, Incoming: c.state, Plugin: plugin, NoReboot: true})
	if err != nil {
		return nil, err
	}
	defer v.Quit()
	if err := command(ctx, ctl, "arm", "armed"); err != nil {
		return nil, err
	}
	if err := v.Cont(); err != nil {
		return nil, err
	}
	if err := v.Send("AQ-INVOKE " + input); err != nil {
		return nil, err
	}
	inv, err := WaitInvocation(ctx, v, input, 5*time.Minute)
	if err != nil {
		return nil, c.explain(err, v, "handle("+input+")")
	}
	doneNs := monotonicNs()
	if err := v.Stop(); err != nil {
		return nil, err
	}
	if err := command(ctx, ctl, "stop", "stopped"); err != nil {
		return nil, err
	}
	f, err := os.Open(out)
	if err != nil {
		return nil, err
	}
	raw, err := ParseRawTrace(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	if raw.Dropped > 0 {
		return nil, fmt.Errorf("the plugin dropped %d records (out of memory)", raw.Dropped)
	}
	changed, err := changedPages(c.snapshot, memPath)
	if err != nil {
		return nil, err
	}
	r := &runResult{input: input, raw: raw, changed: changed, doneNs: doneNs, output: inv.Output,
		guestNs: inv.GuestNs, digest: inv.Digest}
	if c.keepPost {
		r.post = filepath.Join(c.work, fmt.Sprintf("post%d.mem", n))
		if err := copySparse(r.post, memPath); err != nil {
			return nil, err
		}
	}
	// Classify changed pages the vCPU did not write while the image after
	// the invocation still exists.
	if c.disk == nil {
		if c.disk, err = newDiskIndex(c.g.RootImg); err != nil {
			return nil, err
		}
	}
	cpuWritten := map[uint64]bool{}
	for _, a := range raw.Accesses {
		if a.Kind == wset.Write {
			cpuWritten[a.Page] = true
		}
	}
	// Pages the idle guest wrote after the window (interrupt handlers,
	// between the runner's end marker and the host's pause) explain changes
	// too, though they are not the invocation's.
	r.afterWritten = map[uint64]bool{}
	for _, a := range raw.After {
		if a.Kind == wset.Write && !cpuWritten[a.Page] {
			r.afterWritten[a.Page] = true
		}
	}
	for p := range r.afterWritten {
		cpuWritten[p] = true
	}
	if r.dev, r.unexplained, err = deviceWrites(memPath, changed, cpuWritten, c.disk); err != nil {
		return nil, err
	}
	// The handler ran during [done - guestNs, done] on the host clock that
	// the plugin also stamps accesses with.
	end := doneNs
	if _, markNs := raw.End(); raw.Marked {
		end = min(end, markNs)
	}
	start := end - min(uint64(r.guestNs), end)
	r.handlerI = raw.insnAt(end) - raw.insnAt(start)
	return r, nil
}

// command writes a plugin control command and waits for its ack.
func command(ctx context.Context, ctl, cmd, want string) error {
	ack := ctl + ".ack"
	os.Remove(ack)
	if err := writeFileAtomic(ctl, []byte(cmd+"\n")); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(ack); err == nil {
			s := strings.TrimSpace(string(b))
			if s == want {
				return nil
			}
			return fmt.Errorf("plugin answered %q to %q", s, cmd)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return fmt.Errorf("the TCG plugin did not acknowledge %q (is plugin support enabled in this QEMU?)", cmd)
}

func monotonicNs() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// pageSet returns the pages touched with any of kind's bits (all when 0).
func pageSet(t *wset.Trace, kind wset.Kind) map[uint64]bool {
	s := map[uint64]bool{}
	for _, a := range t.Accesses {
		if kind == 0 || a.Kind&kind != 0 {
			s[a.Page] = true
		}
	}
	return s
}

// pageKinds folds every page's access kinds.
func pageKinds(t *wset.Trace) map[uint64]wset.Kind {
	k := map[uint64]wset.Kind{}
	for _, a := range t.Accesses {
		k[a.Page] |= a.Kind
	}
	return k
}

// Jaccard is the page-set overlap |A∩B| / |A∪B| of two traces.
func Jaccard(a, b *wset.Trace) float64 {
	sa, sb := pageSet(a, 0), pageSet(b, 0)
	inter := 0
	for p := range sa {
		if sb[p] {
			inter++
		}
	}
	union := len(sa) + len(sb) - inter
	if union == 0 {
		return 1
	}
	return float64(inter) / float64(union)
}

// nativeEnv is the environment of native runs in a chroot of a guest root:
// the one corpus/guest/init gives the runner in the guest.
var nativeEnv = []string{"HOME=/tmp", "PATH=/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1", "PYTHONHASHSEED=0", "LANG=C.UTF-8"}

// nativeRuns is how many times NativeTime runs a handler.
const nativeRuns = 5

// NativeTime runs init() and one handle(input) natively on the host, in a
// chroot of the guest's root filesystem (same interpreter, same libraries),
// and returns the handler time and result digest.
func NativeTime(ctx context.Context, g *Guest, fn, input string) (int64, string, error) {
	var best int64 = -1
	digest := ""
	// Fresh processes; the minimum is the least disturbed by the other
	// tenants of the host.
	// The runs are bounded (5 min each on average): the guest ran the same
	// handler under TCG, tens of times slower, within its own deadline.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute*nativeRuns)
	defer cancel()
	for i := 0; i < nativeRuns; i++ {
		cmd := exec.CommandContext(ctx, "chroot", g.RootDir, "/usr/bin/python3", "-u", "/aq/runner.py", fn, "--native", input)
		cmd.Env = nativeEnv
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, "", fmt.Errorf("native run of %s(%s): %w: %s", fn, input, err, out)
		}
		var ns int64
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) == 5 && f[0] == "AQ-NATIVE" {
				ns, _ = strconv.ParseInt(f[3], 10, 64)
				digest = f[4]
			}
		}
		if ns <= 0 {
			return 0, "", fmt.Errorf("native run of %s(%s) printed no timing: %s", fn, input, out)
		}
		if best < 0 || ns < best {
			best = ns
		}
	}
	return best, digest, nil
}

// windowInsns is the traced window's length in instructions.
func windowInsns(r *RawTrace) uint64 {
	end, _ := r.End()
	return end - r.ArmedInsn
}
