package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/corpus"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

// demoFunctions are the workloads the demo captures when the cache has no
// corpus: the two cheapest to capture.
var demoFunctions = []string{"helloworld", "json_serdes"}

func init() {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "The one-command tour: corpus, embedded pod, publish, a short side-by-side benchmark",
		Long: `demo runs Aquifer's main job on a fresh machine with nothing but this binary:
it finds the workload corpus in the cache, or captures two functions from real
Linux guests under QEMU (when qemu-system-x86 is installed and this runs as
root), or else generates the calibrated synthetic corpus; starts the embedded
pod (etcd, an emulated CXL region, memory nodes); converts and publishes each
snapshot; and runs a short benchmark of every strategy side by side, printing
the table and where the plot is. Every restored byte is verified. Last, where
QEMU runs, it restores one real guest in QEMU through a pod and prints the
function's output (aquifer vm run).

The corpus, guests and packages are cached in $AQUIFER_CACHE_DIR, else
$XDG_CACHE_HOME/aquifer, else ~/.cache/aquifer.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			start := time.Now()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if f.corpusDir == "" {
				dir, err := demoCorpus(ctx, cmd)
				if err != nil {
					return err
				}
				f.corpusDir = dir
			}
			f.quick = true
			if !cmd.Flags().Changed("storage") {
				// The tour: the NVMe model and the files in DRAM; this
				// machine's own disk where FUSE cannot mount.
				f.storage = "nvme,dram"
				if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
					f.storage = "host,dram"
					fmt.Fprintln(cmd.ErrOrStderr(), "demo: no /dev/fuse or not root: the disk-based baselines read this machine's disk (--storage host,dram)")
				}
			}
			if f.plotOut == "" {
				f.plotOut = filepath.Join(os.TempDir(), "aquifer-demo.svg")
			}
			if f.jsonOut == "" {
				f.jsonOut = filepath.Join(os.TempDir(), "aquifer-demo.json")
			}
			if _, err := runBench(cmd, &f); err != nil {
				return err
			}
			if err := demoRealGuest(ctx, cmd, f.corpusDir, splitList(f.workloads)); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "demo finished in %v; every restored byte matched its snapshot\n", time.Since(start).Round(time.Second))
			return nil
		},
	}
	f.register(cmd, "1,8")
	// The demo is always the short run: say so in its help instead of
	// offering --quick, and show the defaults it really uses.
	fl := cmd.Flags()
	fl.MarkHidden("quick")
	fl.Lookup("runs").Usage = "rounds per concurrency level (default 3; 0: auto, from --min-runs until every geomean's 95% interval is within --ci-target, at most --max-runs)"
	fl.Lookup("runs").DefValue = "3"
	fl.Lookup("workloads").Usage = "comma-separated workloads (default: the first two in the corpus)"
	fl.Lookup("storage").Usage = "comma-separated storages for the disk-based strategies (default nvme,dram; host,dram without /dev/fuse or root): nvme and network (device models through FUSE), host (this machine's disk as it is), dram (files in tmpfs)"
	fl.Lookup("storage").DefValue = ""
	fl.Lookup("json").Usage = "write the JSON report here (default $TMPDIR/aquifer-demo.json)"
	fl.Lookup("plot").Usage = "write the charts here (default $TMPDIR/aquifer-demo.svg)"
	register(cmd)
}

// demoRealGuest restores one real guest through a pod in QEMU and prints
// the function's output (skipped, saying why, where QEMU cannot run): the
// first of --workloads, else helloworld, else the corpus's first.
func demoRealGuest(ctx context.Context, cmd *cobra.Command, dir string, workloads []string) error {
	c, err := corpus.Open(dir)
	if err != nil {
		return err
	}
	if c.Kind() == corpus.KindSynthetic {
		fmt.Fprintln(cmd.OutOrStdout(), "demo: no real-guest restore: the corpus is synthetic")
		return nil
	}
	if err := corpus.CheckHost(); err != nil {
		fmt.Fprintf(cmd.OutOrStdout(), "demo: no real-guest restore: %v\n", err)
		return nil
	}
	name := c.Workloads[0].Name
	if _, err := c.Get("helloworld"); err == nil {
		name = "helloworld"
	}
	if len(workloads) > 0 {
		name = workloads[0]
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "demo: restoring the real %s guest in QEMU through an embedded pod (aquifer vm run)\n", name)
	res, err := realGuestRun(ctx, cmd.ErrOrStderr(), &vmRunFlags{workload: name, strategy: "aquifer", corpusDir: dir, timeout: 3 * time.Minute})
	if err != nil {
		return fmt.Errorf("restoring %s in a real guest: %w", name, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "demo: real guest %s restored through the pod (hot set from %s): %s(%s) = %s, output checked; restore %v, end-to-end %v (QEMU TCG)\n",
		res.Workload, res.HotSource, res.Workload, res.Input, res.Output, time.Duration(res.RestoreNs).Round(time.Millisecond),
		time.Duration(res.EndToEndNs).Round(time.Millisecond))
	return nil
}

// demoCorpus returns a corpus directory, capturing or synthesising one if
// the cache has none.
func demoCorpus(ctx context.Context, cmd *cobra.Command) (string, error) {
	for _, kind := range []string{corpus.KindCaptured, corpus.KindSynthetic} {
		if c, err := corpus.Open(corpus.DefaultDir(kind)); err == nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "demo: using the %s corpus in %s\n", kind, c.Dir)
			return c.Dir, nil
		}
	}
	if err := corpus.CheckHost(); err == nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "demo: capturing %s from real guests under QEMU TCG (cached for next time)\n", strings.Join(demoFunctions, ", "))
		var bar *progressbar.ProgressBar
		c, err := corpus.Capture(ctx, corpus.Options{Functions: demoFunctions,
			Progress: func(fn, step string, done, total int) {
				if bar == nil {
					bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(cmd.ErrOrStderr()),
						progressbar.OptionShowCount(), progressbar.OptionSetElapsedTime(true), progressbar.OptionSetWidth(30))
				}
				bar.Describe(strings.TrimSpace(fn + " " + step))
				bar.Set(done)
			}})
		if bar != nil {
			bar.Finish()
			fmt.Fprintln(cmd.ErrOrStderr())
		}
		if err == nil {
			return c.Dir, nil
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "demo: capture failed (%v); falling back to the synthetic corpus\n", err)
	} else {
		fmt.Fprintf(cmd.ErrOrStderr(), "demo: cannot capture here (%v); generating the synthetic corpus\n", err)
	}
	c, err := corpus.Synth(corpus.SynthOptions{Functions: demoFunctions})
	if err != nil {
		return "", err
	}
	return c.Dir, nil
}
