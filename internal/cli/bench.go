package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/aquifer-pool/aquifer/bench"
	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

type benchFlags struct {
	quick                            bool
	workloads, strategies, conc      string
	runs, vcpus                      int
	jsonOut, plotOut, corpusDir, dir string
	localPod                         bool
	vmm                              string
}

func (f *benchFlags) register(cmd *cobra.Command, defConc string) {
	fl := cmd.Flags()
	fl.BoolVar(&f.quick, "quick", false, "a short run: two workloads, concurrency 1 and 8, 2 rounds")
	fl.StringVar(&f.workloads, "workloads", "", "comma-separated workloads (default: all in the corpus)")
	fl.StringVar(&f.strategies, "strategies", strings.Join(bench.AllStrategies, ","), "comma-separated strategies")
	fl.StringVar(&f.conc, "concurrency", defConc, "comma-separated concurrency levels")
	fl.IntVar(&f.runs, "runs", 3, "rounds per concurrency level (strategies interleaved)")
	fl.IntVar(&f.vcpus, "vcpus", 2, "vCPU threads per VM")
	fl.StringVar(&f.jsonOut, "json", "", "write the JSON report here")
	fl.StringVar(&f.plotOut, "plot", "", "write a chart here (.svg or .png)")
	fl.StringVar(&f.corpusDir, "corpus", "", "corpus directory (default: the captured corpus if present, else the synthetic one, generated if missing)")
	fl.StringVar(&f.dir, "work-dir", "", "directory for derived files (default: a temporary one)")
	fl.BoolVar(&f.localPod, "local-images", false, "aquifer strategies read images from local disk instead of the embedded pod (no tiers)")
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
	o := bench.Options{Corpus: c, Workloads: splitList(f.workloads), Strategies: splitList(f.strategies),
		Runs: f.runs, VCPUs: f.vcpus, Log: os.Stderr, VMM: f.vmm}
	if f.vmm == bench.VMMQEMU && !cmd.Flags().Changed("concurrency") {
		f.conc = "1,4"
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
			o.Runs = 2
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
	pod, err := startPod(ctx, o.Bin, o.WorkDir, f.localPod)
	if err != nil {
		return nil, err
	}
	defer pod.Close()
	o.Pod = pod
	samples, err := bench.Run(ctx, o)
	if err != nil {
		return nil, err
	}
	rep := bench.Aggregate(samples, c.Kind(), pod.Kind(), o.Runs)
	rep.Samples = samples
	rep.WriteTable(cmd.OutOrStdout())
	if f.jsonOut != "" {
		if err := rep.WriteJSON(f.jsonOut); err != nil {
			return rep, err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "JSON report: %s\n", f.jsonOut)
	}
	if f.plotOut != "" {
		if err := rep.WritePlot(f.plotOut); err != nil {
			return rep, err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "plot: %s\n", f.plotOut)
	}
	return rep, nil
}

// startPod starts the pod the aquifer strategies use.
func startPod(ctx context.Context, bin, dir string, local bool) (bench.Pod, error) {
	if local {
		return bench.StartDirPod(ctx, bin, dir)
	}
	return bench.StartPoolPod(ctx, bin, dir)
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
	f.register(cmd, "1,8,32")
	register(cmd)
}
