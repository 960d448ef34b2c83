package realvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/aquifer-pool/aquifer/guest"
	"golang.org/x/sys/unix"
)

// Strategy names: the same as package bench's.
const (
	Firecracker     = "firecracker"
	FirecrackerUffd = "firecracker-uffd"
	REAP            = "reap"
	FaaSnap         = "faasnap"
	Aquifer         = "aquifer"
	AquiferEarly    = "aquifer-early"
	AquiferCXLOnly  = "aquifer-cxl-only"
	AquiferRDMAOnly = "aquifer-rdma-only"
	Warm            = "warm"
)

// Strategies lists every strategy Run knows, in report order.
var Strategies = []string{Firecracker, FirecrackerUffd, REAP, FaaSnap, Aquifer, AquiferEarly, AquiferCXLOnly, AquiferRDMAOnly, Warm}

// PoolStrategy reports whether s restores through a pager daemon.
func PoolStrategy(s string) bool {
	return s == Aquifer || s == AquiferEarly || s == AquiferCXLOnly || s == AquiferRDMAOnly
}

// Available reports why real guests cannot run here (nil when they can):
// QEMU must be installed and this must run as root.
func Available() error {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return errors.New("real guests unavailable: qemu-system-x86_64 not installed (run corpus/ci-deps.sh as root)")
	}
	if os.Geteuid() != 0 {
		return errors.New("real guests unavailable: needs root (capture, userfaultfd for QEMU)")
	}
	return nil
}

// ErrWrongOutput marks a run whose guest answered, but not what the
// capture recorded for the input.
var ErrWrongOutput = errors.New("wrong output")

// Server is a serving side that the caller runs itself (tests, or an
// external handler): Listen is called before QEMU starts and must return
// once the socket accepts connections; the returned wait is called after
// QEMU has exited and reports the faults served.
type Server func(ctx context.Context, socket string) (wait func() (faults uint64, err error), err error)

// Config describes one restore + invocation.
type Config struct {
	Workload *corpus.Workload
	// Guest is the built guest the workload was captured with
	// (corpus.OpenGuest(cache, Workload.Meta.GuestKey)).
	Guest *corpus.Guest
	// Shim is the built aqshim.so (corpus.BuildShim).
	Shim     string
	Strategy string
	// Input is the function's input (default: the first evaluation input).
	Input string
	// WorkDir holds sockets and plans (short: socket paths ≤ 108 bytes).
	WorkDir string
	// Bin is the aquifer binary (firecracker-uffd and reap start
	// `aquifer handle` processes).
	Bin string
	// REAPWS is REAP's working-set file (baseline.BuildREAP).
	REAPWS string
	// FaaSnapPlan is FaaSnap's mapping plan (baseline.BuildFaaSnap).
	FaaSnapPlan string
	// API is the pager daemon's control socket and Snapshot the published
	// snapshot name (pool strategies); VMID names the VM there.
	API, Snapshot, VMID string
	// Serve, when set, replaces the strategy's serving side with the
	// caller's (uffd backends only).
	Serve Server
	// HugePages restores through the shim's huge mode: 2 MiB pages
	// (hugetlb; vm.nr_hugepages must cover guest RAM). uffd backends only;
	// REAP's working set and a pool strategy's image must be of 2 MiB
	// pages (the daemon refuses a 4 KiB image for a 2 MiB guest).
	HugePages bool
	// Resident is warm's resident copy of the memory image (ResidentCopy),
	// made by the caller before any VM of a batch starts; empty: Run makes
	// one before its clock starts.
	Resident string
	// KeepCache leaves the page cache alone; by default the memory file
	// and working-set files are evicted first (a cold restore from disk).
	KeepCache bool
	// Timeout bounds the whole run (default 3 minutes).
	Timeout time.Duration
	// AfterOutput, when set, runs once the function answered, with QEMU
	// still running (tests: balloon inflation over QMP).
	AfterOutput func(ctx context.Context, v *corpus.VM) error
}

// Result is the outcome of one run (`aquifer vm run --json`).
type Result struct {
	Workload string `json:"workload"`
	Strategy string `json:"strategy"`
	Input    string `json:"input"`
	OutputOK bool   `json:"output_ok"`
	// Output is the function's result as the guest printed it; Digest its
	// digest and Expected the capture's.
	Output   string `json:"output"`
	Digest   string `json:"digest"`
	Expected string `json:"expected_digest"`
	// Times from QEMU's start: RestoreNs until the VM could resume (device
	// state loaded, serving side ready), FirstOutputNs until the guest's
	// first output after the input was sent, EndToEndNs until its result.
	RestoreNs     int64 `json:"restore_ns"`
	FirstOutputNs int64 `json:"first_output_ns"`
	EndToEndNs    int64 `json:"end_to_end_ns"`
	// QEMUInitNs is QEMU's own start-up (to its control socket), included
	// in RestoreNs and the same for every strategy.
	QEMUInitNs int64 `json:"qemu_init_ns"`
	// Faults counts page faults: served by the handler (FaultsKind
	// "uffd", the whole session) or taken by the QEMU process between
	// resume and result ("process": minor + major, backends without uffd).
	Faults     uint64 `json:"faults"`
	FaultsKind string `json:"faults_kind"`
	// HotSource is where a pool strategy's hot set came from (the CXL
	// tier, or its RDMA copy after the CXL tier failed validation).
	HotSource string `json:"hot_source,omitempty"`
	// Backend is the shim mode (uffd, huge, file, faasnap) or "resident".
	Backend string `json:"backend"`
	// Error says why the run failed, if it did.
	Error string `json:"error,omitempty"`
}

// Run restores c.Workload with c.Strategy, invokes the function and checks
// its output. A run that completed returns its Result with a nil error only
// when the output matched; otherwise the Result (OutputOK false, Error set)
// comes with the error. QEMU and every serving process it started are gone
// when Run returns.
func Run(ctx context.Context, c Config) (*Result, error) {
	res := &Result{Strategy: c.Strategy}
	if c.Workload == nil || c.Guest == nil {
		return res, errors.New("no workload or guest")
	}
	w := c.Workload
	res.Workload = w.Name
	if !slices.Contains(Strategies, c.Strategy) {
		return res, fmt.Errorf("unknown strategy %q (known: %s)", c.Strategy, strings.Join(Strategies, ", "))
	}
	if err := w.Restorable(); err != nil {
		return res, err
	}
	if c.Input == "" && len(w.Meta.EvalInputs) > 0 {
		c.Input = w.Meta.EvalInputs[0]
	}
	res.Input = c.Input
	want, ok := w.Expected(c.Input)
	if !ok {
		return res, fmt.Errorf("%s has no recorded output for input %q (captured inputs: %s)", w.Name, c.Input, inputs(w))
	}
	res.Expected = want.Digest
	if strings.ContainsAny(c.Input, " \t\r\n") || c.Input == "" {
		return res, fmt.Errorf("input %q must be one non-empty word", c.Input)
	}
	if c.Timeout <= 0 {
		c.Timeout = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	if c.WorkDir == "" {
		c.WorkDir = os.TempDir()
	}
	dir, err := os.MkdirTemp(c.WorkDir, "vm")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)

	r := &run{c: c, res: res, dir: dir}
	defer r.cleanup()
	err = r.do(ctx)
	if err != nil {
		res.Error = err.Error()
	}
	return res, err
}

func inputs(w *corpus.Workload) string {
	var in []string
	for k := range w.Meta.Outputs {
		in = append(in, k)
	}
	slices.Sort(in)
	return strings.Join(in, ", ")
}

// run is the state of one Run.
type run struct {
	c        Config
	res      *Result
	dir      string
	cleanups []func()
	// wait collects the serving side's fault count after QEMU exited.
	wait func() (uint64, error)
	// ready blocks until the serving side lets the VM resume.
	ready func(ctx context.Context) error
	env   []string
	mem   string // -object value of the memory backend
	// background, when set, starts with the clock (FaaSnap's paging).
	background func()
}

func (r *run) cleanup() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func (r *run) do(ctx context.Context) error {
	w := r.c.Workload
	mib := w.Meta.MemSize >> 20
	if w.Meta.MemSize%(1<<20) != 0 {
		return fmt.Errorf("%s: memory size %d is not a whole number of MiB", w.Name, w.Meta.MemSize)
	}
	if err := r.serving(ctx); err != nil {
		return err
	}

	t0 := time.Now()
	if r.background != nil {
		r.background()
	}
	v, err := corpus.StartVM(ctx, corpus.VMConfig{Guest: r.c.Guest, Fn: w.Name, MemMiB: int(mib), MemBackend: r.mem,
		WorkDir: r.dir, Incoming: w.State, RestoreLater: true, Env: r.env, NoReboot: true})
	if err != nil {
		return fmt.Errorf("starting QEMU for %s (%s): %w", w.Name, r.c.Strategy, err)
	}
	defer v.Kill()
	r.res.QEMUInitNs = int64(time.Since(t0))
	if err := v.Restore(ctx, w.State); err != nil {
		return fmt.Errorf("restoring %s (%s): %w", w.Name, r.c.Strategy, err)
	}
	if r.ready != nil {
		if err := r.ready(ctx); err != nil {
			return fmt.Errorf("serving side not ready: %w", err)
		}
	}
	r.res.RestoreNs = int64(time.Since(t0))
	faults0 := processFaults(v.Pid())
	if err := v.Cont(); err != nil {
		return err
	}
	if err := v.Send("AQ-INVOKE " + r.c.Input); err != nil {
		return err
	}
	inv, err := corpus.WaitInvocation(ctx, v, r.c.Input, time.Until(deadline(ctx)))
	if err != nil {
		return fmt.Errorf("%s (%s) did not answer: %w", w.Name, r.c.Strategy, err)
	}
	r.res.FirstOutputNs = int64(inv.Started.Sub(t0))
	r.res.EndToEndNs = int64(inv.Done.Sub(t0))
	r.res.Output, r.res.Digest = inv.Output, inv.Digest
	r.res.OutputOK = inv.Digest == r.res.Expected
	if r.res.FaultsKind == "process" {
		r.res.Faults = processFaults(v.Pid()) - faults0
	}
	var hookErr error
	if r.c.AfterOutput != nil {
		hookErr = r.c.AfterOutput(ctx, v)
	}
	v.Quit()
	if r.wait != nil {
		n, err := r.wait()
		if err != nil && hookErr == nil {
			hookErr = fmt.Errorf("serving side: %w", err)
		}
		r.res.Faults = n
	}
	if !r.res.OutputOK {
		return fmt.Errorf("%w: %s(%s) returned %s (%s), the capture recorded %s", ErrWrongOutput, w.Name, r.c.Input,
			inv.Digest, inv.Output, r.res.Expected)
	}
	return hookErr
}

func deadline(ctx context.Context) time.Time {
	d, ok := ctx.Deadline()
	if !ok {
		return time.Now().Add(time.Hour)
	}
	return d
}

// serving prepares the memory backend, the shim's environment and the
// serving side of the strategy.
func (r *run) serving(ctx context.Context) error {
	w, c := r.c.Workload, r.c
	size := fmt.Sprint(w.Meta.MemSize)
	mib := fmt.Sprintf("%dM", w.Meta.MemSize>>20)
	r.mem = "memory-backend-memfd,id=mem,size=" + mib + ",share=on"
	shim := func(mode string, kv ...string) {
		r.res.Backend = mode
		r.env = append([]string{"LD_PRELOAD=" + c.Shim, "AQ_SHIM_MODE=" + mode, "AQ_SHIM_SIZE=" + size}, kv...)
	}
	if c.Shim == "" && c.Strategy != Warm {
		return errors.New("no shim (corpus.BuildShim)")
	}
	uffdShim := func(socket string) {
		if c.HugePages {
			shm := r.shmPath("huge")
			r.mem = "memory-backend-file,id=mem,size=" + mib + ",mem-path=" + shm + ",share=on,align=2M"
			shim("huge", "AQ_SHIM_SOCKET="+socket)
		} else {
			shim("uffd", "AQ_SHIM_SOCKET="+socket)
		}
		r.res.FaultsKind = "uffd"
	}
	if c.HugePages && (c.Strategy == Firecracker || c.Strategy == FaaSnap || c.Strategy == Warm) {
		// Firecracker restores hugetlbfs-backed guests only through UFFD
		// (REAP's working set and the pool's image must then be of 2 MiB
		// pages: bench.Options.GuestPageSize).
		return fmt.Errorf("2 MiB pages need a uffd backend (firecracker-uffd, reap or a pool strategy), not %s: Firecracker restores huge_pages \"2M\" snapshots only through UFFD", c.Strategy)
	}
	socket := filepath.Join(r.dir, "uffd.sock")
	if c.Serve != nil {
		if c.Strategy != FirecrackerUffd && c.Strategy != REAP {
			return fmt.Errorf("a caller's server replaces firecracker-uffd or reap, not %s", c.Strategy)
		}
		wait, err := c.Serve(ctx, socket)
		if err != nil {
			return err
		}
		r.wait = wait
		uffdShim(socket)
		return nil
	}
	switch c.Strategy {
	case Firecracker:
		r.dropCache(w.Mem)
		shim("file", "AQ_SHIM_FILE="+w.Mem)
		r.res.FaultsKind = "process"
	case FaaSnap:
		return r.faasnap()
	case Warm:
		return r.warm()
	case FirecrackerUffd, REAP:
		wait, err := startHandle(ctx, r, socket)
		if err != nil {
			return err
		}
		r.wait = wait
		uffdShim(socket)
	default: // pool strategies
		sock, ready, wait, err := r.prepareOnDaemon(ctx)
		if err != nil {
			return err
		}
		r.ready, r.wait = ready, wait
		uffdShim(sock)
	}
	return nil
}

// shmPath names a /dev/shm file of this run, removed at cleanup.
func (r *run) shmPath(what string) string {
	p := fmt.Sprintf("/dev/shm/aquifer-realvm-%d-%s-%s", os.Getpid(), filepath.Base(r.dir), what)
	r.cleanups = append(r.cleanups, func() { os.Remove(p) })
	return p
}

// faasnap maps memory by FaaSnap's plan through the shim: zero regions
// anonymous, non-zero regions from the memory file, the loading set from
// its own file on top, which is read into the page cache concurrently
// with the restore (FaaSnap's concurrent paging).
func (r *run) faasnap() error {
	if r.c.FaaSnapPlan == "" {
		return errors.New("faasnap needs a plan (baseline.BuildFaaSnap)")
	}
	p, err := guest.ReadFaaSnapPlan(r.c.FaaSnapPlan)
	if err != nil {
		return err
	}
	mem := r.c.Workload.Mem
	if p.MemSize != r.c.Workload.Meta.MemSize {
		return fmt.Errorf("FaaSnap plan for %d bytes, workload has %d", p.MemSize, r.c.Workload.Meta.MemSize)
	}
	for _, f := range []string{mem, p.LoadingSet} {
		if strings.ContainsAny(f, " \t\n") {
			return fmt.Errorf("the shim's plan cannot name %q (white space)", f)
		}
	}
	var b strings.Builder
	for _, nz := range p.NonZero {
		fmt.Fprintf(&b, "%d %d %d %s\n", nz[0]*p.PageSize, nz[1]*p.PageSize, nz[0]*p.PageSize, mem)
	}
	for _, l := range p.LS {
		fmt.Fprintf(&b, "%d %d %d %s\n", l[0]*p.PageSize, l[2]*p.PageSize, l[1]*p.PageSize, p.LoadingSet)
	}
	plan := filepath.Join(r.dir, "faasnap.plan")
	if err := os.WriteFile(plan, []byte(b.String()), 0o600); err != nil {
		return err
	}
	r.dropCache(mem, p.LoadingSet)
	r.res.Backend, r.res.FaultsKind = "faasnap", "process"
	r.env = []string{"LD_PRELOAD=" + r.c.Shim, "AQ_SHIM_MODE=faasnap", "AQ_SHIM_PLAN=" + plan,
		"AQ_SHIM_SIZE=" + fmt.Sprint(r.c.Workload.Meta.MemSize)}
	var stop atomic.Bool
	done := make(chan struct{})
	r.background = func() {
		go func() {
			defer close(done)
			f, err := os.Open(p.LoadingSet)
			if err != nil {
				return
			}
			defer f.Close()
			buf := make([]byte, 1<<20)
			for off := int64(0); !stop.Load(); off += int64(len(buf)) {
				if n, err := f.ReadAt(buf, off); n == 0 || err != nil {
					return
				}
			}
		}()
	}
	r.cleanups = append(r.cleanups, func() {
		stop.Store(true)
		if r.background != nil {
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
		}
	})
	return nil
}

// warm gives the VM its memory already resident: a shared tmpfs copy of the
// image, made before the clock starts, mapped by QEMU itself (no shim).
func (r *run) warm() error {
	shm := r.c.Resident
	if shm == "" {
		p, remove, err := ResidentCopy(r.c.Workload)
		if err != nil {
			return err
		}
		r.cleanups = append(r.cleanups, remove)
		shm = p
	}
	r.mem = fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on", r.c.Workload.Meta.MemSize>>20, shm)
	r.res.Backend, r.res.FaultsKind = "resident", "process"
	return nil
}

var residentSeq atomic.Uint64

// ResidentCopy copies w's memory image into /dev/shm for the warm strategy
// (each VM writes its own copy); remove deletes it.
func ResidentCopy(w *corpus.Workload) (path string, remove func(), err error) {
	path = fmt.Sprintf("/dev/shm/aquifer-realvm-%d-%d-warm", os.Getpid(), residentSeq.Add(1))
	remove = func() { os.Remove(path) }
	if err := copyFile(path, w.Mem); err != nil {
		remove()
		return "", nil, fmt.Errorf("making a warm copy of the image: %w", err)
	}
	return path, remove, nil
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// dropCache evicts files from the page cache (a cold restore from disk).
func (r *run) dropCache(paths ...string) {
	if r.c.KeepCache {
		return
	}
	for _, p := range paths {
		if f, err := os.Open(p); err == nil {
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			f.Close()
		}
	}
}

// processFaults is a process's minor + major page faults so far.
func processFaults(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command: state is field 3, minflt 10, majflt 12.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 10 {
		return 0
	}
	var minflt, majflt uint64
	fmt.Sscan(f[7], &minflt)
	fmt.Sscan(f[9], &majflt)
	return minflt + majflt
}
