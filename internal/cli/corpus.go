package cli

import (
	"context"
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
	)
	capture := &cobra.Command{
		Use:   "capture",
		Short: "Capture the corpus from real guests under QEMU TCG (needs root, apt, qemu-system-x86, gcc)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			memMiB, err := memFlag(mem)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var bar *progressbar.ProgressBar
			c, err := corpus.Capture(ctx, corpus.Options{Functions: fns, MemMiB: memMiB, Out: out, Cache: cacheDir, Force: force,
				Progress: func(fn, step string, done, total int) {
					if bar == nil {
						bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(cmd.ErrOrStderr()),
							progressbar.OptionShowCount(), progressbar.OptionSetElapsedTime(true),
							progressbar.OptionSetPredictTime(true), progressbar.OptionSetWidth(30))
					}
					bar.Describe(strings.TrimSpace(fn + " " + step))
					bar.Set(done)
				}})
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
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := corpus.DefaultDir(corpus.KindCaptured)
			if len(args) == 1 {
				dir = args[0]
			}
			c, err := corpus.Open(dir)
			if err != nil {
				return err
			}
			return printCorpus(cmd, c)
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
		if m.Checks != nil {
			line += fmt.Sprintf("; repeat overlap %.3f, all changed pages written: %v", m.Checks.RepeatJaccard, m.Checks.AllChangedWritten)
		}
		fmt.Fprintln(w, line)
	}
	return nil
}
