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
	Runs        int
	VCPUs       int
	// WorkDir holds derived files (images, baseline files, sockets).
	WorkDir string
	// Pod, if set, is the pod the aquifer strategies restore from; nil
	// uses a local-image pager daemon.
	Pod Pod
	// Progress draws a progress bar on this writer (nil: none).
	Progress io.Writer
	Log      io.Writer
	// VMM is where the VMs run: VMMEmulator (default, trace replay) or
	// VMMQEMU (real guests, bench/qemu.go).
	VMM string
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

// Sample is one VM's restore + invocation.
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
}

// prepared holds a workload's derived files.
type prepared struct {
	w        *corpus.Workload
	eval     []string
	reapWS   string
	faasnap  string
	images   map[string]string // strategy → image path
	snapName map[string]string // strategy → pod snapshot name
}

// Run executes the benchmark and returns every sample.
func Run(ctx context.Context, o Options) ([]Sample, error) {
	if err := CheckStrategies(o.Strategies); err != nil {
		return nil, err
	}
	if err := CheckVMM(o.VMM); err != nil {
		return nil, err
	}
	if o.Runs <= 0 {
		o.Runs = 3
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
		return nil, fmt.Errorf("bench: no workload of %v in the corpus at %s", o.Workloads, o.Corpus.Dir)
	}
	var preps []*prepared
	for _, w := range wls {
		fmt.Fprintf(o.Log, "bench: preparing %s (%s)\n", w.Name, w.Kind)
		p, err := prepare(ctx, o, w)
		if err != nil {
			return nil, fmt.Errorf("bench: preparing %s: %w", w.Name, err)
		}
		preps = append(preps, p)
	}
	total := 0
	for _, c := range o.Concurrency {
		total += c * o.Runs * len(o.Strategies) * len(preps)
	}
	var bar *progressbar.ProgressBar
	if o.Progress != nil {
		bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(o.Progress), progressbar.OptionSetDescription("restores"),
			progressbar.OptionShowCount(), progressbar.OptionSetWidth(30), progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(o.Progress) }))
	}
	var samples []Sample
	for _, c := range o.Concurrency {
		for round := 0; round < o.Runs; round++ {
			for _, p := range preps {
				// Rotate the strategy order every round.
				for k := range o.Strategies {
					s := o.Strategies[(k+round)%len(o.Strategies)]
					got, err := runBatch(ctx, o, p, s, c, round)
					if err != nil {
						return samples, fmt.Errorf("bench: %s on %s at concurrency %d: %w", s, p.w.Name, c, err)
					}
					samples = append(samples, got...)
					if bar != nil {
						bar.Add(c)
					}
				}
			}
		}
	}
	if bar != nil {
		bar.Finish()
	}
	return samples, nil
}

func contains(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

func prepare(ctx context.Context, o Options, w *corpus.Workload) (*prepared, error) {
	dir := filepath.Join(o.WorkDir, w.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := &prepared{w: w, eval: w.Eval, images: map[string]string{}, snapName: map[string]string{}}
	if len(p.eval) == 0 {
		return nil, fmt.Errorf("workload %s has no evaluation trace", w.Name)
	}
	rec, err := w.LoadRecord()
	if err != nil {
		return nil, err
	}
	need := func(s string) bool { return contains(o.Strategies, s) }
	if need(REAP) {
		p.reapWS = filepath.Join(dir, "reap.ws")
		if err := baseline.BuildREAP(w.Mem, rec, p.reapWS); err != nil {
			return nil, err
		}
	}
	if need(FaaSnap) {
		fd := filepath.Join(dir, "faasnap")
		os.MkdirAll(fd, 0o755)
		if p.faasnap, err = baseline.BuildFaaSnap(w.Mem, rec, fd); err != nil {
			return nil, err
		}
	}
	convert := func(strategy string, tr *wset.Trace) error {
		if !need(strategy) {
			return nil
		}
		img := filepath.Join(dir, strategy+".img")
		if _, err := snapimage.Convert(w.Mem, img, snapimage.ConvertOptions{Trace: tr, PageSize: 4096}); err != nil {
			return err
		}
		p.images[strategy] = img
		p.snapName[strategy] = w.Name + "-" + strategy
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
	t := &wset.Trace{PageSize: rec.PageSize, MemSize: rec.MemSize, Source: "all non-zero pages"}
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

// runBatch restores c VMs of one workload with one strategy at once.
func runBatch(ctx context.Context, o Options, p *prepared, s string, c, round int) ([]Sample, error) {
	eval := p.eval[round%len(p.eval)]
	// Socket paths must stay under 108 bytes: keep the run directory short.
	dir, err := os.MkdirTemp(o.WorkDir, "r")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	switch s {
	case Firecracker, FirecrackerUffd, REAP, FaaSnap:
		dropCache(p.w.Mem, p.reapWS)
		if p.faasnap != "" {
			dropCache(filepath.Join(filepath.Dir(p.faasnap), "loading-set"))
		}
	}
	if o.VMM == VMMQEMU {
		return runQEMUBatch(ctx, o, p, s, c, round)
	}
	samples := make([]Sample, c)
	errs := make([]error, c)
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			samples[i], errs[i] = runVM(ctx, o, p, s, eval, dir, i, fmt.Sprintf("%s-%s-c%d-r%d-%d", p.w.Name, s, c, round, i))
			samples[i].Strategy, samples[i].Workload, samples[i].Concurrency, samples[i].Round, samples[i].VM = s, p.w.Name, c, round, i
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return samples, nil
}

func runVM(ctx context.Context, o Options, p *prepared, s, eval, dir string, n int, id string) (Sample, error) {
	args := []string{"guest", "run", "--json", "--mem", p.w.Mem, "--trace", eval, "--vcpus", strconv.Itoa(o.VCPUs),
		"--think-scale", "1", "--log-level", "warn"}
	var server *exec.Cmd
	var serverOut bytes.Buffer
	switch s {
	case Firecracker:
		args = append(args, "--backend", "file")
	case Warm:
		args = append(args, "--backend", "warm")
	case FaaSnap:
		args = append(args, "--backend", "faasnap", "--faasnap-plan", p.faasnap)
	case FirecrackerUffd, REAP:
		sock := filepath.Join(dir, fmt.Sprintf("v%d.sock", n))
		sargs := []string{"handle", "--socket", sock, "--mem", p.w.Mem, "--log-level", "warn"}
		if s == REAP {
			sargs = append(sargs, "--reap-ws", p.reapWS)
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
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return Sample{}, fmt.Errorf("guest %s: %v: %s", id, err, lastLines(errb.String()))
	}
	var rep guest.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		return Sample{}, fmt.Errorf("guest %s report: %v", id, err)
	}
	smp := Sample{Restore: rep.Restore, FirstTouch: rep.FirstTouch, EndToEnd: rep.EndToEnd, Verified: rep.Verified}
	if server != nil {
		server.Wait()
		if m := faultsRE.FindStringSubmatch(serverOut.String()); m != nil {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			smp.Faults = n
		}
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
