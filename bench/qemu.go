package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/aquifer-pool/aquifer/realvm"
)

// VMMs: where a benchmark's VMs run.
const (
	// VMMEmulator replays the corpus's page-access traces in the guest
	// emulator (aquifer guest run): the default.
	VMMEmulator = "emulator"
	// VMMQEMU restores the real guests in QEMU TCG through the aqshim
	// stand-in for Firecracker's memory backends (package realvm), each
	// run checked by the function's output.
	VMMQEMU = "qemu"
)

// CheckVMM validates Options.VMM.
func CheckVMM(v string) error {
	if v != "" && v != VMMEmulator && v != VMMQEMU {
		return fmt.Errorf("unknown VMM %q (known: %s, %s)", v, VMMEmulator, VMMQEMU)
	}
	return nil
}

var shimOnce struct {
	sync.Once
	path string
	err  error
}

// shim builds (once per process) the aqshim the real-guest runs preload.
func shim(ctx context.Context) (string, error) {
	shimOnce.Do(func() { shimOnce.path, shimOnce.err = corpus.BuildShim(ctx, corpus.CacheDir()) })
	return shimOnce.path, shimOnce.err
}

// realConfig is the realvm configuration of strategy s on a prepared
// workload: its derived files (REAP working set, FaaSnap plan, the pod's
// snapshot) and the built guest and shim.
func (p *prepared) realConfig(ctx context.Context, o Options, s string) (realvm.Config, error) {
	if err := p.w.Restorable(); err != nil {
		return realvm.Config{}, err
	}
	g, err := corpus.OpenGuest(corpus.CacheDir(), p.w.Meta.GuestKey)
	if err != nil {
		return realvm.Config{}, err
	}
	so, err := shim(ctx)
	if err != nil {
		return realvm.Config{}, err
	}
	c := realvm.Config{Workload: p.w, Guest: g, Shim: so, Strategy: s, WorkDir: o.WorkDir, Bin: o.Bin,
		REAPWS: p.on[StorageHost].reapWS, FaaSnapPlan: p.on[StorageHost].faasnapPlan, Snapshot: p.snapName[s]}
	if realvm.PoolStrategy(s) {
		if o.Pod == nil {
			return c, fmt.Errorf("no pod for %s", s)
		}
		c.API = o.Pod.API()
	}
	return c, nil
}

// PrepareReal derives what strategy s needs for a real-guest restore of w
// (working-set files, images published into o.Pod) and returns the
// realvm configuration to run it with: `aquifer vm run`.
func PrepareReal(ctx context.Context, o Options, w *corpus.Workload, s string) (realvm.Config, error) {
	o.Strategies = []string{s}
	if err := CheckStrategies(o.Strategies); err != nil {
		return realvm.Config{}, err
	}
	if err := w.Restorable(); err != nil {
		return realvm.Config{}, err
	}
	p, err := prepare(ctx, o, w, nil)
	if err != nil {
		return realvm.Config{}, err
	}
	return p.realConfig(ctx, o, s)
}

// runQEMUBatch (called by runBatch) restores c real guests of one workload with one strategy at
// once, each checked by its output; the input rotates over the workload's
// evaluation inputs by round.
func runQEMUBatch(ctx context.Context, o Options, p *prepared, s string, c, round int) ([]Sample, error) {
	base, err := p.realConfig(ctx, o, s)
	if err != nil {
		return nil, err
	}
	in := p.w.Meta.EvalInputs
	if len(in) == 0 {
		return nil, fmt.Errorf("workload %s has no evaluation input", p.w.Name)
	}
	base.Input = in[round%len(in)]
	base.Timeout = time.Duration(c) * 3 * time.Minute
	// runBatch dropped the page cache once for the batch: a VM must not
	// evict what another of the batch just read.
	base.KeepCache = true
	// warm: every VM's resident copy is made before any clock starts.
	resident := make([]string, c)
	if s == Warm {
		for i := range resident {
			path, remove, err := realvm.ResidentCopy(p.w)
			if err != nil {
				return nil, err
			}
			defer remove()
			resident[i] = path
		}
	}
	samples := make([]Sample, c)
	errs := make([]error, c)
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cfg := base
			cfg.VMID = fmt.Sprintf("%s-%s-c%d-r%d-%d", p.w.Name, s, c, round, i)
			cfg.Resident = resident[i]
			res, err := realvm.Run(ctx, cfg)
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w", cfg.VMID, err)
				return
			}
			samples[i] = Sample{Strategy: s, Workload: p.w.Name, Concurrency: c, Round: round, VM: i,
				Restore: time.Duration(res.RestoreNs), FirstTouch: time.Duration(res.FirstOutputNs),
				EndToEnd: time.Duration(res.EndToEndNs), Faults: res.Faults}
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

// APIPod is a running pager daemon with a pool (aquifer serve --embedded
// or a real deployment) named by its API socket.
type APIPod struct {
	api string
	c   *client.Client
}

// AttachPod uses the daemon at api.
func AttachPod(api string) *APIPod { return &APIPod{api: api, c: client.New(api, client.Options{})} }

// Publish implements Pod.
func (p *APIPod) Publish(ctx context.Context, image, name string) error {
	return publishTo(ctx, p.c, image, name)
}

// publishTo publishes image (on this host) as name through a daemon.
func publishTo(ctx context.Context, c *client.Client, image, name string) error {
	abs, err := filepath.Abs(image)
	if err != nil {
		return err
	}
	c.RemoveSnapshot(ctx, name) // a re-run replaces an old entry
	_, err = c.Publish(ctx, abs, name)
	return err
}

// API implements Pod.
func (p *APIPod) API() string { return p.api }

// Kind implements Pod.
func (p *APIPod) Kind() string { return "pager daemon at " + p.api }

// Close implements Pod (the daemon is not ours to stop).
func (p *APIPod) Close() error { return nil }
