package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/baseline"
	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/aquifer-pool/aquifer/guest"
	"github.com/aquifer-pool/aquifer/pagestat"
	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/wset"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
)

// Options configure a benchmark run.
type Options struct {
	// Bin is the aquifer binary whose subcommands serve and restore.
	Bin string
	// Corpus is the corpus to run (see package corpus).
	Corpus *corpus.Corpus
	// Workloads filters the corpus (nil: all).
	Workloads   []string
	Strategies  []string
	Concurrency []int
	// Storages the disk-based strategies run on (nil: DefaultStorages);
	// the first is the primary one (the plain "vs_firecracker" keys).
	Storages []string
	// Runs is the number of rounds per concurrency level; 0 means auto:
	// at least MinRuns, then more until every geomean's 95% interval is
	// within ±CITarget, at most MaxRuns.
	Runs             int
	MinRuns, MaxRuns int
	CITarget         float64
	VCPUs            int
	// WorkDir holds derived files (images, baseline files, sockets).
	WorkDir string
	// Pod, if set, is the pod the aquifer strategies restore from; nil
	// uses a local-image pager daemon.
	Pod Pod
	// Progress draws a progress bar on this writer (nil: none).
	Progress io.Writer
	Log      io.Writer
	// GuestPageSize makes images and REAP working sets for guests of this
	// page size (0: 4 KiB; 2 MiB: real guests in the shim's huge mode,
	// `aquifer vm run --huge-pages`). See pagesizes.go.
	GuestPageSize uint32
	// VMM is where the VMs run: VMMEmulator (default, trace replay) or
	// VMMQEMU (real guests, bench/qemu.go).
	VMM string
	// ServerNice is the nice value of every strategy's page server: the
	// `aquifer handle` processes of REAP and firecracker-uffd here, and
	// the pod's daemon (started with it: StartPoolPod). 0 (the default)
	// leaves them at the VMs' priority. Below 0 a page server does not
	// wait behind the vCPUs it serves; every strategy's server gets it
	// alike, and the strategies without one (firecracker, faasnap, warm:
	// the kernel fills their faults on the faulting thread) have nothing
	// to raise. docs/evaluation.md, cut 29, measures it.
	ServerNice int
}

// Pod is where aquifer strategies publish and restore.
type Pod interface {
	// Publish makes image available under name.
	Publish(ctx context.Context, image, name string) error
	// API is the pager daemon's control socket.
	API() string
	// Kind describes the tiers ("emulated CXL (shm) + emulated RDMA (tcp memory nodes)", ...).
	Kind() string
	Close() error
}

// Sample is one VM's restore + invocation. Fields past EndToEnd are
// optional: a producer fills what it measures (statistics read only
// Workload, Strategy, Storage, Concurrency, Round and EndToEnd).
type Sample struct {
	Strategy    string        `json:"strategy"`
	Workload    string        `json:"workload"`
	Concurrency int           `json:"concurrency"`
	Round       int           `json:"round"`
	VM          int           `json:"vm"`
	Restore     time.Duration `json:"restore_ns"`
	FirstTouch  time.Duration `json:"first_touch_ns"`
	EndToEnd    time.Duration `json:"end_to_end_ns"`
	Verified    int           `json:"verified_pages"`
	Faults      uint64        `json:"faults"`
	Preinstall  time.Duration `json:"preinstall_ns,omitempty"`
	// Setup is per-restore set-up work on the clock (setup.go): for
	// aquifer strategies the PUT /v1/vms/ID, part of Restore; for reap the
	// handler's read of the working-set file, overlapped with the guest's
	// restore (Restore = max(fetch, the guest's own restore)).
	Setup time.Duration `json:"setup_ns,omitempty"`
	// Storage is where a disk-based strategy's files were (see AllStorages).
	Storage   string     `json:"storage,omitempty"`
	Breakdown *Breakdown `json:"breakdown,omitempty"`
	// Resident is the guest memory resident at the end (private and
	// page-cache mapped).
	Resident *guest.Residency `json:"resident,omitempty"`
	// GuestCPU is the VM process's CPU time (user + system); ServerCPU the
	// serving side's for this VM: its handler process, or the pager
	// daemon's CPU over the batch divided by the batch's VMs.
	GuestCPU  time.Duration `json:"guest_cpu_ns,omitempty"`
	ServerCPU time.Duration `json:"server_cpu_ns,omitempty"`
	// VCPUBusy is the summed replay time of all vCPUs (each from resume to
	// its last access).
	VCPUBusy time.Duration `json:"vcpu_busy_ns,omitempty"`
	// VCPUCPU is the vCPU threads' summed CPU time in the replay,
	// VCPUCPUMax the busiest thread's.
	VCPUCPU    time.Duration `json:"vcpu_cpu_ns,omitempty"`
	VCPUCPUMax time.Duration `json:"vcpu_cpu_max_ns,omitempty"`
}

// Run is what Run measured.
type RunResult struct {
	Samples     []Sample
	Calibration []Calibration
	Storages    []StorageInfo
	Snapshots   []SnapshotMemory
	// Rounds run per concurrency level.
	Rounds map[int]int
}

// prepared holds a workload's derived files.
type prepared struct {
	w        *corpus.Workload
	eval     []string
	cls      *classes
	ref      string           // DRAM copy of the memory file: every verification reads it
	on       map[string]files // storage → files
	images   map[string]string
	snapName map[string]string
	memSize  int64
	counts   map[string][2]uint64 // strategy → (hot, cold) pages of its image
	// atRest is each DRAM copy's allocation right after it was written
	// (the runs may fill holes later: warm's MAP_POPULATE reads them all).
	atRest map[string]uint64
}

// variant is a strategy on a storage ("" for non-disk strategies).
type variant struct{ strategy, storage string }

func (v variant) label() string { return Sample{Strategy: v.strategy, Storage: v.storage}.Label() }

// Run executes the benchmark.
func Run(ctx context.Context, o Options) (*RunResult, error) {
	if err := CheckStrategies(o.Strategies); err != nil {
		return nil, err
	}
	if err := CheckVMM(o.VMM); err != nil {
		return nil, err
	}
	if o.VMM == VMMQEMU {
		// A real guest maps the memory file itself (the shim): the storage
		// models apply to the trace-replay emulator only.
		o.Storages = []string{StorageHost}
	}
	if len(o.Storages) == 0 {
		o.Storages = DefaultStorages
	}
	if err := CheckStorages(o.Storages); err != nil {
		return nil, err
	}
	if o.MinRuns <= 0 {
		o.MinRuns = 5
	}
	if o.MaxRuns < o.MinRuns {
		o.MaxRuns = max(o.MinRuns, 10)
	}
	if o.CITarget <= 0 {
		o.CITarget = 0.10
	}
	if o.VCPUs <= 0 {
		o.VCPUs = 2
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	var wls []*corpus.Workload
	for _, w := range o.Corpus.Workloads {
		if len(o.Workloads) == 0 || contains(o.Workloads, w.Name) {
			wls = append(wls, w)
		}
	}
	if err := CheckWorkloads(o.Corpus, o.Workloads); err != nil {
		return nil, err
	}
	if len(wls) == 0 {
		return nil, fmt.Errorf("no workload of %v in the corpus at %s", o.Workloads, o.Corpus.Dir)
	}
	var vars []variant
	for _, s := range o.Strategies {
		if diskBased(s) {
			for _, st := range o.Storages {
				vars = append(vars, variant{s, st})
			}
		} else {
			vars = append(vars, variant{s, ""})
		}
	}
	stor, err := newStorages()
	if err != nil {
		return nil, err
	}
	defer stor.close()
	res := &RunResult{Rounds: map[int]int{}}
	var preps []*prepared
	for _, w := range wls {
		fmt.Fprintf(o.Log, "bench: preparing %s (%s)\n", w.Name, w.Kind)
		p, err := prepare(ctx, o, w, stor)
		if err != nil {
			return nil, fmt.Errorf("preparing %s: %w", w.Name, err)
		}
		preps = append(preps, p)
	}
	if err := setupStorages(ctx, o, stor, preps, res); err != nil {
		return nil, err
	}
	fixed := o.Runs > 0
	total := 0
	for _, c := range o.Concurrency {
		r := o.Runs
		if !fixed {
			r, _ = o.roundsFor(c)
		}
		total += c * r * len(vars) * len(preps)
	}
	var bar *progressbar.ProgressBar
	if o.Progress != nil {
		bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(o.Progress), progressbar.OptionSetDescription("restores"),
			progressbar.OptionShowCount(), progressbar.OptionSetWidth(30), progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(o.Progress) }))
	}
	for _, c := range o.Concurrency {
		var level []Sample
		minR, maxR := o.roundsFor(c)
		for round := 0; ; round++ {
			if fixed && round >= o.Runs {
				break
			}
			if !fixed && round >= minR {
				st := bootstrap(level, o.Storages[0], 400, uint64(round))
				wide := notWithin(st, o.CITarget)
				if len(wide) == 0 || round >= maxR {
					fmt.Fprintf(o.Log, "bench: concurrency %d: %d rounds; intervals wider than ±%.0f%%: %v\n", c, round, 100*o.CITarget, wide)
					break
				}
				if bar != nil {
					bar.ChangeMax(bar.GetMax() + c*len(vars)*len(preps))
				}
			}
			for _, p := range preps {
				cpu, page := calibrate()
				cal := Calibration{Concurrency: c, Round: round, Workload: p.w.Name, CPU: cpu, FreshPage: page}
				if f, err := measureCopyFloor(); err == nil {
					cal.CopyFloor, cal.CopyPerPage = f.Batched, f.PerPage
				} else if round == 0 {
					fmt.Fprintf(o.Log, "bench: no UFFDIO_COPY floor: %v\n", err)
				}
				res.Calibration = append(res.Calibration, cal)
				// Rotate the variant order every round.
				for k := range vars {
					v := vars[(k+round)%len(vars)]
					got, err := runBatch(ctx, o, p, v, c, round)
					if err != nil {
						// Keep what was measured: the caller may still report it.
						res.Samples = append(res.Samples, level...)
						return res, fmt.Errorf("%s on %s at concurrency %d: %w", v.label(), p.w.Name, c, err)
					}
					level = append(level, got...)
					if bar != nil {
						bar.Add(c)
					}
				}
			}
			res.Rounds[c] = round + 1
		}
		res.Samples = append(res.Samples, level...)
	}
	if bar != nil {
		bar.Finish()
	}
	stor.stopModels()
	for i := range res.Storages {
		res.Storages[i].Requests = stor.stats[res.Storages[i].Name]
	}
	res.Snapshots = snapshotMemory(o, preps)
	return res, nil
}

// roundsFor is the least and most rounds of an auto run at concurrency c:
// a round at c >= 4 holds c samples per variant, so fewer rounds do.
func (o Options) roundsFor(c int) (lo, hi int) {
	if c < 4 {
		return o.MinRuns, o.MaxRuns
	}
	lo = min(o.MinRuns, 3)
	return lo, max(lo, o.MaxRuns*2/5)
}

// notWithin lists the geomeans whose interval is wider than ±frac.
func notWithin(st *levelStats, frac float64) []string {
	var out []string
	for k, v := range st.speedup {
		if ci, ok := st.speedupCI[k]; ok && !ci.Within(v, frac) {
			out = append(out, k)
		}
	}
	return out
}

func setupStorages(ctx context.Context, o Options, stor *storages, preps []*prepared, res *RunResult) error {
	for _, st := range o.Storages {
		switch st {
		case StorageHost:
			res.Storages = append(res.Storages, hostInfo(preps[0].on[StorageHost].mem))
		case StorageDRAM:
			res.Storages = append(res.Storages, StorageInfo{Name: StorageDRAM,
				Kind: "host DRAM: the files on tmpfs (the page cache is the file), never dropped"})
		case StorageNVMe, StorageNetwork:
			info, err := stor.mount(ctx, o.Bin, st, o.WorkDir, preps[0].ref)
			if err != nil {
				return err
			}
			fmt.Fprintf(o.Log, "bench: %s model: FUSE overhead %v (+%v/KiB) subtracted; delivers %v; %v\n", st,
				info.FUSEOverhead.Round(time.Microsecond), info.FUSEOverheadPerKiB, info.Probes[0], info.Probes[1])
			res.Storages = append(res.Storages, info)
			for _, p := range preps {
				f, err := stor.on(st, p.on[StorageDRAM], filepath.Join(o.WorkDir, p.w.Name))
				if err != nil {
					return err
				}
				p.on[st] = f
			}
		}
	}
	return nil
}

func contains(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

func prepare(ctx context.Context, o Options, w *corpus.Workload, stor *storages) (*prepared, error) {
	dir := filepath.Join(o.WorkDir, w.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := &prepared{images: map[string]string{}, snapName: map[string]string{}, on: map[string]files{},
		counts: map[string][2]uint64{}}
	if len(w.Eval) == 0 {
		return nil, fmt.Errorf("workload %s has no evaluation trace", w.Name)
	}
	rec, err := w.LoadRecord()
	if err != nil {
		return nil, err
	}
	// Work on private copies: the corpus is shared, and a capture may
	// rewrite it while the benchmark runs.
	local := *w
	local.Mem = filepath.Join(dir, "mem")
	if err := copySparse(w.Mem, local.Mem); err != nil {
		return nil, err
	}
	local.Eval = nil
	for i, e := range w.Eval {
		b, err := os.ReadFile(e)
		if err != nil {
			return nil, err
		}
		dst := filepath.Join(dir, fmt.Sprintf("eval-%d.ws", i+1))
		if err := WriteFileAtomic(dst, b); err != nil {
			return nil, err
		}
		local.Eval = append(local.Eval, dst)
	}
	w = &local
	p.w, p.eval = w, w.Eval
	if p.cls, err = loadClasses(w.Mem, rec); err != nil {
		return nil, err
	}
	if st, err := os.Stat(w.Mem); err == nil {
		p.memSize = st.Size()
	}
	need := func(s string) bool { return contains(o.Strategies, s) }
	host := files{mem: w.Mem}
	if need(REAP) {
		host.reapWS = filepath.Join(dir, "reap.ws")
		r, err := coarsened(rec, o.GuestPageSize)
		if err != nil {
			return nil, err
		}
		if err := baseline.BuildREAP(w.Mem, r, host.reapWS); err != nil {
			return nil, err
		}
	}
	if need(FaaSnap) {
		fd := filepath.Join(dir, "faasnap")
		os.MkdirAll(fd, 0o755)
		if host.faasnapPlan, err = baseline.BuildFaaSnap(w.Mem, rec, fd); err != nil {
			return nil, err
		}
		host.loadingSet = filepath.Join(fd, "loading-set")
	}
	p.on[StorageHost] = host
	p.ref = w.Mem
	p.atRest = map[string]uint64{}
	if stor != nil { // nil: one real-guest restore (aquifer vm run), host files only
		dram, err := stor.copyToDRAM(w.Name, host)
		if err != nil {
			return nil, err
		}
		p.on[StorageDRAM] = dram
		p.ref = dram.mem
		for _, f := range dram.all() {
			p.atRest[f] = allocated(f)
		}
	}
	convert := func(strategy string, tr *wset.Trace) error {
		if !need(strategy) {
			return nil
		}
		img := filepath.Join(dir, strategy+".img")
		if _, err := snapimage.Convert(w.Mem, img, snapimage.ConvertOptions{Trace: tr, PageSize: max(4096, o.GuestPageSize)}); err != nil {
			return err
		}
		p.images[strategy] = img
		p.snapName[strategy] = w.Name + "-" + strategy
		if im, f, err := snapimage.Open(img); err == nil {
			_, hot, cold := im.Counts()
			p.counts[strategy] = [2]uint64{hot, cold}
			f.Close()
		}
		if o.Pod != nil {
			return o.Pod.Publish(ctx, img, p.snapName[strategy])
		}
		return nil
	}
	if err := convert(Aquifer, rec); err != nil {
		return nil, err
	}
	if need(AquiferEarly) {
		// Same image as aquifer; only the resume point differs.
		if img, ok := p.images[Aquifer]; ok {
			p.images[AquiferEarly], p.snapName[AquiferEarly] = img, p.snapName[Aquifer]
			p.counts[AquiferEarly] = p.counts[Aquifer]
		} else if err := convert(AquiferEarly, rec); err != nil {
			return nil, err
		}
	}
	if need(AquiferCXLOnly) {
		// Every non-zero page hot: the recording first, then the rest in
		// offset order.
		all, err := allNonZero(w.Mem, rec)
		if err != nil {
			return nil, err
		}
		if err := convert(AquiferCXLOnly, all); err != nil {
			return nil, err
		}
	}
	if err := convert(AquiferRDMAOnly, nil); err != nil {
		return nil, err
	}
	return p, nil
}

func allNonZero(mem string, rec *wset.Trace) (*wset.Trace, error) {
	f, err := os.Open(mem)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, _ := f.Stat()
	zero, _, err := pagestat.ZeroPages(f, st.Size(), 4096, nil)
	if err != nil {
		return nil, err
	}
	t := &wset.Trace{PageSize: rec.PageSize, MemSize: rec.MemSize, Memory: rec.Memory, Source: "all non-zero pages"}
	seen := map[uint64]bool{}
	var last time.Duration
	for _, a := range rec.FirstTouches() {
		seen[a.Page] = true
		t.Accesses = append(t.Accesses, a)
		last = a.T
	}
	pages := uint64(st.Size()) / 4096
	for p := uint64(0); p < pages; p++ {
		if !seen[p] && !zero.Get(p) {
			t.Accesses = append(t.Accesses, wset.Access{Page: p, T: last, Kind: wset.Read})
		}
	}
	return t, nil
}

// dropCache evicts files from the page cache (a cold restore from disk).
func dropCache(paths ...string) {
	for _, p := range paths {
		if p == "" {
			continue
		}
		if f, err := os.Open(p); err == nil {
			unix.Fdatasync(int(f.Fd()))
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			f.Close()
		}
	}
}

var faultsRE = regexp.MustCompile(`faults served (\d+)`)

// runBatch restores c VMs of one workload with one variant at once.
func runBatch(ctx context.Context, o Options, p *prepared, v variant, c, round int) ([]Sample, error) {
	eval := p.eval[round%len(p.eval)]
	// Socket paths must stay under 108 bytes: keep the run directory short.
	dir, err := os.MkdirTemp(o.WorkDir, "r")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	fs := p.on[v.storage]
	if diskBased(v.strategy) && v.storage != StorageDRAM {
		dropCache(fs.all()...)
	}
	aq := !diskBased(v.strategy) && v.strategy != Warm && v.strategy != NoRestore
	var cpu0 time.Duration
	cpuPod, _ := o.Pod.(CPUMeter)
	if aq && cpuPod != nil {
		cpu0 = cpuPod.CPUTime()
	}
	if o.VMM == VMMQEMU {
		samples, err := runQEMUBatch(ctx, o, p, v.strategy, c, round)
		for i := range samples {
			samples[i].Storage = v.storage
		}
		return samples, err
	}
	samples := make([]Sample, c)
	errs := make([]error, c)
	gate := newVerifyGate(c)
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			samples[i], errs[i] = runVM(ctx, o, p, v, fs, eval, dir, i, fmt.Sprintf("%s-%s-c%d-r%d-%d", p.w.Name, v.strategy, c, round, i), gate)
			samples[i].Strategy, samples[i].Storage, samples[i].Workload = v.strategy, v.storage, p.w.Name
			samples[i].Concurrency, samples[i].Round, samples[i].VM = c, round, i
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	if aq && cpuPod != nil {
		share := (cpuPod.CPUTime() - cpu0) / time.Duration(c)
		for i := range samples {
			samples[i].ServerCPU = share
		}
	}
	return samples, nil
}

// CPUMeter is implemented by pods whose daemon's CPU time can be read.
type CPUMeter interface{ CPUTime() time.Duration }

// processCPU reads a process's user + system time from /proc.
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ (100 on Linux).
const clockTicks = 100

func runVM(ctx context.Context, o Options, p *prepared, v variant, fs files, eval, dir string, n int, id string, gate *verifyGate) (Sample, error) {
	s := v.strategy
	mem := p.ref
	switch {
	case diskBased(s):
		mem = fs.mem
	case s == Warm || s == NoRestore:
		// MAP_POPULATE reads every page: from the disk copy, so that the
		// sparse DRAM copies (the dram storage's files) keep their holes.
		mem = p.on[StorageHost].mem
	}
	args := []string{"guest", "run", "--json", "--mem", mem, "--ref", p.ref, "--trace", eval, "--vcpus", strconv.Itoa(o.VCPUs),
		"--think-scale", "1", "--log-level", "warn", "--touch-times", "--hold-verify"}
	var server *exec.Cmd
	var serverOut bytes.Buffer
	switch s {
	case Firecracker:
		args = append(args, "--backend", "file")
	case Warm:
		args = append(args, "--backend", "warm")
	case NoRestore:
		args = append(args, "--backend", "warm", "--no-faults")
	case FaaSnap:
		args = append(args, "--backend", "faasnap", "--faasnap-plan", fs.faasnapPlan)
	case FirecrackerUffd, REAP:
		sock := filepath.Join(dir, fmt.Sprintf("v%d.sock", n))
		sargs := []string{"handle", "--socket", sock, "--mem", fs.mem, "--log-level", "warn"}
		sargs = append(sargs, niceArgs(o.ServerNice)...)
		if s == REAP {
			sargs = append(sargs, "--reap-ws", fs.reapWS)
		}
		server = exec.CommandContext(ctx, o.Bin, sargs...)
		server.Stdout, server.Stderr = &serverOut, os.Stderr
		if err := server.Start(); err != nil {
			return Sample{}, err
		}
		defer server.Process.Kill()
		if err := waitSocket(ctx, sock); err != nil {
			return Sample{}, err
		}
		args = append(args, "--backend", "uffd", "--socket", sock)
	case Aquifer, AquiferEarly, AquiferCXLOnly, AquiferRDMAOnly:
		if o.Pod == nil {
			return Sample{}, fmt.Errorf("no pod for %s", s)
		}
		args = append(args, "--backend", "uffd", "--pager-api", o.Pod.API(), "--vm", id, "--snapshot", p.snapName[s])
		if s == AquiferEarly {
			args = append(args, "--early-resume")
		}
	}
	cmd := exec.CommandContext(ctx, o.Bin, args...)
	var out, errb bytes.Buffer
	arrived := gate.member()
	defer arrived()
	hold, err := cmd.StdinPipe()
	if err != nil {
		return Sample{}, err
	}
	gate.hold(hold)
	cmd.Stdout, cmd.Stderr = &out, &lineWatch{w: &errb, line: guest.MeasuredLine, seen: arrived}
	if err := cmd.Run(); err != nil {
		return Sample{}, fmt.Errorf("guest %s: %v: %s", id, err, lastLines(errb.String()))
	}
	var rep guest.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		return Sample{}, fmt.Errorf("guest %s report: %v", id, err)
	}
	if server != nil {
		server.Wait() // it has printed its summary: the VM is gone
	}
	setup, err := accountSetup(&rep, s, serverOut.String())
	if err != nil {
		return Sample{}, fmt.Errorf("guest %s: %v", id, err)
	}
	smp := Sample{Restore: rep.Restore, FirstTouch: rep.FirstTouch, EndToEnd: rep.EndToEnd, Verified: rep.Verified,
		Resident: rep.Resident, Breakdown: breakdown(&rep, p.cls), Setup: setup}
	if ps := cmd.ProcessState; ps != nil {
		smp.GuestCPU = ps.UserTime() + ps.SystemTime()
	}
	for _, c := range rep.VCPUCPU {
		smp.VCPUCPU += c
		smp.VCPUCPUMax = max(smp.VCPUCPUMax, c)
	}
	for _, e := range rep.VCPUEnd {
		if e > 0 {
			smp.VCPUBusy += e - rep.Restore - rep.ResumeWait
		}
	}
	if server != nil {
		if ps := server.ProcessState; ps != nil {
			smp.ServerCPU = ps.UserTime() + ps.SystemTime()
		}
		if m := faultsRE.FindStringSubmatch(serverOut.String()); m != nil {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			smp.Faults = n
			smp.Breakdown.HandlerFaults = n
		}
	}
	if o.Pod != nil && (s == Aquifer || s == AquiferEarly || s == AquiferCXLOnly || s == AquiferRDMAOnly) {
		pc, err := pagerCounts(ctx, o.Pod.API(), id)
		if err != nil {
			return smp, err
		}
		smp.Breakdown.Pager = pc
		smp.Preinstall = pc.Preinstall
		smp.Faults = pc.HotFaults + pc.ColdFaults + pc.ZeroFaults
	}
	if rep.Mismatches != 0 {
		return smp, fmt.Errorf("guest %s: %d mismatching pages", id, rep.Mismatches)
	}
	return smp, nil
}

func lastLines(s string) string {
	sc := bufio.NewScanner(bytes.NewBufferString(s))
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return fmt.Sprint(lines)
}

func waitSocket(ctx context.Context, path string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("socket %s did not appear", path)
}
