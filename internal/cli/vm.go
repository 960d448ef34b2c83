package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/bench"
	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/aquifer-pool/aquifer/realvm"
	"github.com/spf13/cobra"
)

// vmRunFlags are `aquifer vm run`'s flags.
type vmRunFlags struct {
	workload, input, strategy string
	api, corpusDir, workDir   string
	asJSON, hugePages         bool
	timeout                   time.Duration
}

func init() {
	var f vmRunFlags
	vm := &cobra.Command{Use: "vm", Short: "Real Linux guests of the corpus, restored in QEMU through Aquifer's serving paths"}
	run := &cobra.Command{
		Use:   "run --workload W [--input I] --strategy S [--json]",
		Short: "Restore a captured real guest with one strategy, invoke its function and check the output",
		Long: `run restores the workload's real snapshot (memory image + device state) in
QEMU 7.2 TCG, which stands in for Firecracker: the aqshim LD_PRELOAD shim maps
guest RAM as Firecracker's memory backends do, so the strategy's serving side
sees a real guest. Strategies: firecracker (File backend), firecracker-uffd
(aquifer handle --mem), reap (aquifer handle --mem --reap-ws), faasnap (its
mapping plan), aquifer, aquifer-early, aquifer-cxl-only, aquifer-rdma-only
(through a pod) and warm (RAM already resident). The function's output is
compared with the one the capture recorded; a wrong output exits non-zero.

Without --api the pool strategies start an embedded pod (aquifer serve
--embedded) for the run; a workload missing from the corpus (or captured
before device state was kept, or whose guest left the cache) is captured
first: a built-in function by name, your own (aquifer corpus capture
--function-file) from the module its workload keeps.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runVM(cmd, &f) },
	}
	fl := run.Flags()
	fl.StringVar(&f.workload, "workload", "", "workload (function) name in the corpus")
	fl.StringVar(&f.input, "input", "", "function input (default: the workload's first evaluation input)")
	fl.StringVar(&f.strategy, "strategy", realvm.Aquifer, "strategy: "+strings.Join(realvm.Strategies, ", "))
	fl.BoolVar(&f.asJSON, "json", false, "print the result as JSON")
	fl.StringVar(&f.api, "api", "", "pager daemon API socket for the pool strategies (default: start an embedded pod)")
	fl.StringVar(&f.corpusDir, "corpus", "", "corpus directory (default: the captured corpus in the cache)")
	fl.StringVar(&f.workDir, "work-dir", "", "directory for derived files and sockets (default: a temporary one)")
	fl.BoolVar(&f.hugePages, "huge-pages", false, "2 MiB pages (the shim's huge mode, hugetlb; vm.nr_hugepages must cover guest RAM): firecracker-uffd, reap and the pool strategies, with 2 MiB images and working sets")
	fl.DurationVar(&f.timeout, "timeout", 3*time.Minute, "give up on the run after this long")
	run.MarkFlagRequired("workload")
	vm.AddCommand(run)
	register(vm)
}

func runVM(cmd *cobra.Command, f *vmRunFlags) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := realGuestRun(ctx, cmd.ErrOrStderr(), f)
	if res == nil && err != nil && f.asJSON {
		// Failed before the run: still one JSON result, output_ok false.
		res = &realvm.Result{Workload: f.workload, Strategy: f.strategy, Input: f.input, Error: err.Error()}
	}
	if res != nil {
		if f.asJSON {
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			enc.Encode(res)
		} else {
			fmt.Fprintf(cmd.OutOrStdout(), "vm: %s (%s, input %s) output %s ok=%v: restore %v, first output %v, end-to-end %v, %d faults (%s)\n",
				res.Workload, res.Strategy, res.Input, res.Output, res.OutputOK, time.Duration(res.RestoreNs).Round(time.Microsecond),
				time.Duration(res.FirstOutputNs).Round(time.Microsecond), time.Duration(res.EndToEndNs).Round(time.Microsecond),
				res.Faults, res.FaultsKind)
		}
	}
	return err
}

// realGuestRun finds (or captures) the workload, starts what the strategy
// needs and runs it once.
func realGuestRun(ctx context.Context, log io.Writer, f *vmRunFlags) (*realvm.Result, error) {
	if err := bench.CheckStrategies([]string{f.strategy}); err != nil {
		return nil, err
	}
	dir := f.corpusDir
	if dir == "" {
		dir = corpus.DefaultDir(corpus.KindCaptured)
	}
	w, err := corpus.EnsureRestorable(ctx, log, dir, f.workload)
	if err != nil {
		return nil, err
	}
	work := f.workDir
	if work == "" {
		d, err := os.MkdirTemp("", "aquifer-vm-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		work = d
	}
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	o := bench.Options{Bin: bin, WorkDir: work}
	if f.hugePages {
		o.GuestPageSize = 2 << 20 // images and REAP working sets of 2 MiB pages
	}
	if realvm.PoolStrategy(f.strategy) {
		if f.api != "" {
			o.Pod = bench.AttachPod(f.api)
		} else {
			fmt.Fprintln(log, "vm: starting an embedded pod (aquifer serve --embedded)")
			pod, err := bench.StartPoolPod(ctx, bin, work, 0)
			if err != nil {
				return nil, err
			}
			defer pod.Close()
			o.Pod = pod
		}
	}
	cfg, err := bench.PrepareReal(ctx, o, w, f.strategy)
	if err != nil {
		return nil, err
	}
	cfg.Input, cfg.Timeout, cfg.HugePages = f.input, f.timeout, f.hugePages
	return realvm.Run(ctx, cfg)
}

// realCorpus opens the captured corpus for real-guest runs (dir, default
// the cache's), capturing every requested workload that is missing or was
// captured without device state (all nine when the corpus is empty).
func realCorpus(cmd *cobra.Command, dir string, names []string) (*corpus.Corpus, error) {
	if dir == "" {
		dir = corpus.DefaultDir(corpus.KindCaptured)
	}
	if len(names) == 0 {
		if c, err := corpus.Open(dir); err == nil {
			for _, w := range c.Workloads {
				names = append(names, w.Name)
			}
		} else {
			names = corpus.Names()
		}
	}
	for _, n := range names {
		if _, err := corpus.EnsureRestorable(cmd.Context(), cmd.ErrOrStderr(), dir, n); err != nil {
			return nil, err
		}
	}
	return corpus.Open(dir)
}
