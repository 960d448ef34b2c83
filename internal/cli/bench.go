package cli

import (
	"context"
	"fmt"
	"github.com/aquifer-pool/aquifer/internal/prio"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/bench"
	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/aquifer-pool/aquifer/diskemu"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

type benchFlags struct {
	quick                            bool
	workloads, strategies, conc      string
	storage                          string
	runs, minRuns, maxRuns, vcpus    int
	serverNice                       int
	ciTarget                         float64
	jsonOut, plotOut, corpusDir, dir string
	localPod                         bool
	vmm                              string
}

func (f *benchFlags) register(cmd *cobra.Command, defConc string) {
	fl := cmd.Flags()
	fl.BoolVar(&f.quick, "quick", false, "a short run: two workloads, concurrency 1 and 8, 3 rounds")
	fl.StringVar(&f.workloads, "workloads", "", "comma-separated workloads (default: all in the corpus)")
	fl.StringVar(&f.strategies, "strategies", strings.Join(bench.AllStrategies, ","), "comma-separated strategies")
	fl.StringVar(&f.conc, "concurrency", defConc, "comma-separated concurrency levels")
	fl.IntVar(&f.runs, "runs", 0, "rounds per concurrency level, strategies interleaved (0: auto, from --min-runs until every geomean's 95% interval is within --ci-target, at most --max-runs)")
	fl.IntVar(&f.minRuns, "min-runs", 5, "with --runs 0: rounds before the intervals are checked")
	fl.IntVar(&f.maxRuns, "max-runs", 10, "with --runs 0: most rounds per concurrency level (at concurrency 4 and more: min(--min-runs, 3) to 2/5 of --max-runs, each round holding that many VMs)")
	fl.Float64Var(&f.ciTarget, "ci-target", 0.10, "relative half-width every geomean's 95% interval should be within")
	fl.StringVar(&f.storage, "storage", strings.Join(bench.DefaultStorages, ","),
		"comma-separated storages for the disk-based strategies: nvme and network (device models through FUSE), host (this machine's disk as it is), dram (files in tmpfs); the first is the primary baseline")
	fl.IntVar(&f.vcpus, "vcpus", 2, "vCPU threads per VM")
	fl.StringVar(&f.jsonOut, "json", "", "write the JSON report here")
	fl.StringVar(&f.plotOut, "plot", "", "write the charts here: NAME.png/.svg (times, a panel per concurrency level) and NAME-speedup.png/.svg")
	fl.StringVar(&f.corpusDir, "corpus", "", "corpus directory (default: the captured corpus if present, else the synthetic one, generated if missing)")
	fl.StringVar(&f.dir, "work-dir", "", "directory for derived files (default: a temporary one)")
	fl.BoolVar(&f.localPod, "local-images", false, "aquifer strategies read images from local disk instead of the embedded pod (no tiers)")
	fl.IntVar(&f.serverNice, "server-nice", 0, "nice value of every strategy's page server (the pod's daemon, aquifer handle for reap and firecracker-uffd), -20..19; 0: the VMs' own")
	fl.StringVar(&f.vmm, "vmm", bench.VMMEmulator, "where VMs run: emulator (trace replay) or qemu (real guests in QEMU TCG, checked by their output; concurrency 1,4 by default)")
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// openCorpus finds or makes the corpus the benchmark runs on.
func openCorpus(dir string) (*corpus.Corpus, error) {
	if dir != "" {
		return corpus.Open(dir)
	}
	if c, err := corpus.Open(corpus.DefaultDir(corpus.KindCaptured)); err == nil {
		return c, nil
	}
	if c, err := corpus.Open(corpus.DefaultDir(corpus.KindSynthetic)); err == nil {
		return c, nil
	}
	fmt.Fprintln(os.Stderr, "bench: no corpus in the cache; generating the synthetic corpus (aquifer corpus synth)")
	return corpus.Synth(corpus.SynthOptions{})
}

func runBench(cmd *cobra.Command, f *benchFlags) (*bench.Report, error) {
	if err := bench.CheckVMM(f.vmm); err != nil {
		return nil, err
	}
	open := openCorpus
	if f.vmm == bench.VMMQEMU {
		open = func(dir string) (*corpus.Corpus, error) { return realCorpus(cmd, dir, splitList(f.workloads)) }
	}
	c, err := open(f.corpusDir)
	if err == nil { // a workload the corpus lacks is refused before any pod starts
		err = bench.CheckWorkloads(c, splitList(f.workloads))
	}
	if err != nil {
		return nil, err
	}
	start, loadBefore := time.Now(), bench.LoadAverage()
	o := bench.Options{Corpus: c, Workloads: splitList(f.workloads), Strategies: splitList(f.strategies),
		Storages: splitList(f.storage), Runs: f.runs, MinRuns: f.minRuns, MaxRuns: f.maxRuns, CITarget: f.ciTarget,
		VCPUs: f.vcpus, Log: os.Stderr, VMM: f.vmm, ServerNice: f.serverNice}
	if err := prio.Check(o.ServerNice); err != nil {
		return nil, fmt.Errorf("--server-nice: %w", err)
	}
	if f.vmm == bench.VMMQEMU && !cmd.Flags().Changed("concurrency") {
		f.conc = "1,4"
	}
	if err := bench.CheckStorages(o.Storages); err != nil {
		return nil, err
	}
	for _, s := range splitList(f.conc) {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("--concurrency: %q is not a positive integer", s)
		}
		o.Concurrency = append(o.Concurrency, n)
	}
	if f.quick {
		if len(o.Workloads) == 0 {
			for _, w := range c.Workloads[:min(2, len(c.Workloads))] {
				o.Workloads = append(o.Workloads, w.Name)
			}
		}
		if !cmd.Flags().Changed("concurrency") {
			o.Concurrency = []int{1, 8}
		}
		if !cmd.Flags().Changed("runs") {
			o.Runs = 3
		}
	}
	if o.Bin, err = os.Executable(); err != nil {
		return nil, err
	}
	if f.dir == "" {
		d, err := os.MkdirTemp("", "aquifer-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		o.WorkDir = d
	} else {
		o.WorkDir = f.dir
	}
	if term.IsTerminal(int(os.Stderr.Fd())) {
		o.Progress = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	pod, err := startPod(ctx, o.Bin, o.WorkDir, f.localPod, o.ServerNice)
	if err != nil {
		return nil, err
	}
	defer pod.Close()
	o.Pod = pod
	res, runErr := bench.Run(ctx, o)
	if runErr != nil && (res == nil || len(res.Samples) == 0) {
		return nil, runErr
	}
	rep := bench.AggregateWith(res.Samples, bench.AggregateOptions{Corpus: c.Kind(), Pod: pod.Kind(), Runs: o.Runs,
		PrimaryStorage: o.Storages[0], CITarget: o.CITarget})
	rep.AttachRun(res)
	rep.Samples = res.Samples
	rep.Command = "aquifer " + strings.Join(os.Args[1:], " ")
	rep.ServerNice = o.ServerNice
	rep.Load = &bench.Load{Before: loadBefore, After: bench.LoadAverage()}
	rep.Wall = time.Since(start)
	if runErr != nil {
		// Report what was measured before the failure, then fail.
		rep.Error = runErr.Error()
		defer fmt.Fprintf(cmd.ErrOrStderr(), "bench: the run stopped early; the report holds what was measured until then\n")
	}
	rep.WriteTable(cmd.OutOrStdout())
	if f.jsonOut != "" {
		if err := rep.WriteJSON(f.jsonOut); err != nil {
			return rep, err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "JSON report: %s\n", f.jsonOut)
	}
	if f.plotOut != "" {
		files, err := rep.WritePlots(f.plotOut)
		if err != nil {
			return rep, err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "plots: %s\n", strings.Join(files, ", "))
	}
	return rep, runErr
}

// startPod starts the pod the aquifer strategies use.
func startPod(ctx context.Context, bin, dir string, local bool, nice int) (bench.Pod, error) {
	if local {
		return bench.StartDirPod(ctx, bin, dir, nice)
	}
	return bench.StartPoolPod(ctx, bin, dir, nice)
}

func init() {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure end-to-end restore + invocation time of Aquifer against Firecracker, REAP and FaaSnap",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := runBench(cmd, &f)
			return err
		},
	}
	f.register(cmd, "1,8")
	var from, jsonOut, plotOut string
	var markdown bool
	rcmd := &cobra.Command{
		Use:   "report --from FILE",
		Short: "Recompute a bench report's statistics, tables and plots from the samples in its JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			old, err := bench.ReadReport(from)
			if err != nil {
				return err
			}
			rep, err := old.Reaggregate()
			if err != nil {
				return err
			}
			if markdown {
				rep.WriteMarkdown(cmd.OutOrStdout())
			} else {
				rep.WriteTable(cmd.OutOrStdout())
			}
			if jsonOut != "" {
				if err := rep.WriteJSON(jsonOut); err != nil {
					return err
				}
			}
			if plotOut != "" {
				files, err := rep.WritePlots(plotOut)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "plots: %s\n", strings.Join(files, ", "))
			}
			return nil
		},
	}
	rcmd.Flags().StringVar(&from, "from", "", "a report written by aquifer bench --json (with its samples)")
	rcmd.Flags().StringVar(&jsonOut, "json", "", "write the recomputed report here")
	rcmd.Flags().BoolVar(&markdown, "markdown", false, "print the tables as Markdown (docs/evaluation.md)")
	rcmd.Flags().StringVar(&plotOut, "plot", "", "write the plots here (NAME.png/.svg, NAME-speedup.png/.svg)")
	rcmd.MarkFlagRequired("from")
	cmd.AddCommand(rcmd, storageModelCmd())
	register(cmd)
}

// storageModelCmd is the process bench starts per device model: it mounts
// the model (FUSE), reports ready as a JSON line and serves until SIGTERM.
func storageModelCmd() *cobra.Command {
	var model, mount, backing, probe string
	var nice int
	c := &cobra.Command{
		Use:    "storage-model --model nvme|network --mount DIR --backing DIR --probe FILE",
		Short:  "Serve a storage device model through FUSE (started by aquifer bench)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, ok := diskemu.Models()[model]
			if !ok {
				return fmt.Errorf("--model %q: want nvme or network", model)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return diskemu.Serve(ctx, mount, backing, probe, m, nice, cmd.OutOrStdout())
		},
	}
	f := c.Flags()
	f.StringVar(&model, "model", "nvme", "device model: nvme or network")
	f.StringVar(&mount, "mount", "", "mount point")
	f.StringVar(&backing, "backing", "", "directory served (read once at mount)")
	f.StringVar(&probe, "probe", "", "file in --backing to calibrate and probe on")
	f.IntVar(&nice, "nice", -10, "nice value of the server's threads")
	for _, n := range []string{"mount", "backing", "probe"} {
		c.MarkFlagRequired(n)
	}
	return c
}
