package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/aquifer-pool/aquifer/corpus"
)

func init() {
	cmd := &cobra.Command{
		Use:   "corpus",
		Short: "Capture, synthesise and list the workload corpus (snapshots + page-access traces)",
		Long: `The corpus holds, per serverless function, a snapshot memory image (a
Firecracker-compatible memory file) and page-access traces of invocations.
"capture" records them from real Linux guests under QEMU TCG; "synth" writes a
calibrated synthetic stand-in for machines without QEMU. See docs/corpus.md.`,
	}
	var (
		fns                []string
		mem, out, cacheDir string
		force              bool
		fnFile, fnName     string
		fnPkgs, fnInputs   []string
	)
	capture := &cobra.Command{
		Use:   "capture [--functions F,..] [--function-file PATH.py [--name N] [--packages deb1,deb2] [--inputs a,b,c]]",
		Short: "Capture the corpus from real guests under QEMU TCG (needs root, apt, qemu-system-x86, gcc)",
		Long: `capture boots each function in a real Linux guest under QEMU TCG, snapshots it
after init() and traces invocations (docs/corpus.md). Without flags it captures
the nine built-in functions. --function-file brings your own: a Python module
defining init() and handle(arg), like corpus/guest/functions/*.py, captured in
a guest root of its own with python3 and the Debian packages --packages names,
into the same corpus (then: aquifer corpus ls, aquifer vm run --workload N,
aquifer bench --workloads N).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			memMiB, err := memFlag(mem)
			if err != nil {
				return err
			}
			o := corpus.Options{Functions: fns, MemMiB: memMiB, Out: out, Cache: cacheDir, Force: force}
			if fnFile != "" {
				f, err := corpus.LoadFunction(fnFile, corpus.FunctionOptions{Name: fnName, Packages: fnPkgs, MemMiB: memMiB, Inputs: fnInputs})
				if err != nil {
					return err
				}
				o.Own = []corpus.Function{f}
				if len(fns) == 0 {
					o.MemMiB = 0 // --mem is the brought function's own size
				}
			} else {
				for _, fl := range []string{"name", "packages", "inputs"} {
					if cmd.Flags().Changed(fl) {
						return fmt.Errorf("--%s describes a function file: give --function-file PATH.py", fl)
					}
				}
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var bar *progressbar.ProgressBar
			o.Progress = func(fn, step string, done, total int) {
				if bar == nil {
					bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(cmd.ErrOrStderr()),
						progressbar.OptionShowCount(), progressbar.OptionSetElapsedTime(true),
						progressbar.OptionSetPredictTime(true), progressbar.OptionSetWidth(30))
				}
				bar.Describe(strings.TrimSpace(fn + " " + step))
				bar.Set(done)
			}
			c, err := corpus.Capture(ctx, o)
			if bar != nil {
				bar.Finish()
				fmt.Fprintln(cmd.ErrOrStderr())
			}
			if err != nil {
				return err
			}
			return printCorpus(cmd, c)
		},
	}
	capture.Flags().StringSliceVar(&fns, "functions", nil, "functions to capture (default all: "+strings.Join(corpus.Names(), ",")+")")
	capture.Flags().StringVar(&mem, "mem", "", "guest memory size for every function, e.g. 512MiB (default: per function, 256MiB-512MiB)")
	capture.Flags().StringVar(&out, "out", "", "corpus directory (default "+corpus.DefaultDir(corpus.KindCaptured)+")")
	capture.Flags().StringVar(&cacheDir, "cache", "", "cache for packages, guest and plugin (default $AQUIFER_CACHE_DIR, $XDG_CACHE_HOME/aquifer or ~/.cache/aquifer)")
	capture.Flags().BoolVar(&force, "force", false, "recapture functions already in the corpus")
	capture.Flags().StringVar(&fnFile, "function-file", "", "your own function: a Python module defining init() and handle(arg) (docs/corpus.md)")
	capture.Flags().StringVar(&fnName, "name", "", "with --function-file: the workload name (default: the file name without .py)")
	capture.Flags().StringSliceVar(&fnPkgs, "packages", nil, "with --function-file: Debian packages the module needs beyond python3, e.g. python3-yaml")
	capture.Flags().StringSliceVar(&fnInputs, "inputs", nil, "with --function-file: the recording input, then the evaluation inputs (default a,b,c)")

	var (
		sfns          []string
		smem, sout    string
		from          string
		seed          uint64
		noCalibration bool
	)
	synth := &cobra.Command{
		Use:   "synth",
		Short: "Write a calibrated synthetic corpus (for machines without QEMU)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			memMiB, err := memFlag(smem)
			if err != nil {
				return err
			}
			if from == "" && !noCalibration {
				if _, err := os.Stat(corpus.DefaultDir(corpus.KindCaptured)); err == nil {
					from = corpus.DefaultDir(corpus.KindCaptured)
				}
			}
			switch {
			case from != "":
				fmt.Fprintf(cmd.ErrOrStderr(), "calibrating against the captured corpus in %s\n", from)
			case noCalibration:
				fmt.Fprintln(cmd.ErrOrStderr(), "using the documented default parameters (--defaults)")
			default:
				fmt.Fprintln(cmd.ErrOrStderr(), "no captured corpus: using the documented default parameters")
			}
			c, err := corpus.Synth(corpus.SynthOptions{Functions: sfns, MemMiB: memMiB, Out: sout, From: from, Seed: seed})
			if err != nil {
				return err
			}
			return printCorpus(cmd, c)
		},
	}
	synth.Flags().StringSliceVar(&sfns, "functions", nil, "functions to synthesise (default all)")
	synth.Flags().StringVar(&smem, "mem", "", "guest memory size for every function (default: per function)")
	synth.Flags().StringVar(&sout, "out", "", "corpus directory (default "+corpus.DefaultDir(corpus.KindSynthetic)+")")
	synth.Flags().StringVar(&from, "from", "", "captured corpus to calibrate against (default: the cached captured corpus, if any)")
	synth.Flags().BoolVar(&noCalibration, "defaults", false, "ignore any captured corpus and use the documented defaults")
	synth.Flags().Uint64Var(&seed, "seed", 1, "random seed")

	ls := &cobra.Command{
		Use:   "ls [DIR]",
		Short: "List a corpus with its kind and characterization (zero, hot, touched-cold, written %)",
		Long: `ls lists a corpus directory, or without DIR the cache's corpus: the captured
one (built-in functions and your own) if it holds workloads, else the
synthetic one.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				c, err := corpus.Open(args[0])
				if err != nil {
					return err
				}
				return printCorpus(cmd, c)
			}
			// The cache's corpus: captured (built-in and brought
			// functions), else synthetic, as bench picks it.
			capDir, synDir := corpus.DefaultDir(corpus.KindCaptured), corpus.DefaultDir(corpus.KindSynthetic)
			none := func(dir string, err error) bool {
				_, serr := os.Stat(dir)
				return errors.Is(serr, os.ErrNotExist) || errors.Is(err, corpus.ErrNoWorkloads)
			}
			c, err := corpus.Open(capDir)
			if none(capDir, err) {
				if c, err = corpus.Open(synDir); none(synDir, err) {
					return fmt.Errorf("no corpus in %s or %s: run `aquifer corpus capture` (real guests, needs QEMU) or `aquifer corpus synth`", capDir, synDir)
				}
			}
			if err != nil {
				return err
			}
			if err := printCorpus(cmd, c); err != nil {
				return err
			}
			if c.Dir == capDir {
				if s, err := corpus.Open(synDir); err == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "(a synthetic corpus is in %s too: aquifer corpus ls %s)\n", s.Dir, s.Dir)
				}
			}
			return nil
		},
	}
	cmd.AddCommand(capture, synth, ls)
	register(cmd)
}

func memFlag(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	return corpus.ParseMemMiB(s)
}

func printCorpus(cmd *cobra.Command, c *corpus.Corpus) error {
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "corpus %s (kind: %s)\n", c.Dir, c.Kind())
	var stats []corpus.Stats
	for _, wl := range c.Workloads {
		s, err := corpus.Characterize(wl)
		if err != nil {
			return err
		}
		stats = append(stats, s)
	}
	if err := corpus.WriteTable(w, stats); err != nil {
		return err
	}
	for _, wl := range c.Workloads {
		m := wl.Meta
		line := fmt.Sprintf("  %s: %s, %.4g ns/insn (%s)", wl.Name, wl.Kind, m.Calibration.NsPerInsn, m.Calibration.Source)
		if m.FunctionFile != "" {
			line = fmt.Sprintf("  %s: %s, your function from %s (packages: %s), inputs %s/%s, %.4g ns/insn", wl.Name, wl.Kind, m.Origin,
				strings.Join(append([]string{"python3"}, m.Packages...), " "), m.RecordInput, strings.Join(m.EvalInputs, ","), m.Calibration.NsPerInsn)
		}
		if m.Checks != nil {
			line += fmt.Sprintf("; repeat overlap %.3f, all changed pages written: %v", m.Checks.RepeatJaccard, m.Checks.AllChangedWritten)
		}
		fmt.Fprintln(w, line)
	}
	return nil
}
