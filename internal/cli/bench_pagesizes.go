package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/aquifer-pool/aquifer/internal/prio"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/bench"
	"github.com/aquifer-pool/aquifer/internal/atomicfile"
	"github.com/spf13/cobra"
)

// aquifer bench --page-sizes 4KiB,2MiB: every strategy at each guest page
// size, side by side (bench/pagesizes.go). In its own file, after bench.go,
// so that it wraps the bench command: without the flag bench runs as before.
func init() {
	var cmd *cobra.Command
	for _, c := range rootCmd.Commands() {
		if c.Name() == "bench" {
			cmd = c
		}
	}
	if cmd == nil {
		panic("cli: the bench command is not registered before bench_pagesizes.go")
	}
	var sizes string
	cmd.Flags().StringVar(&sizes, "page-sizes", "", "compare guest page sizes instead: e.g. 4KiB,2MiB (2 MiB guests are hugetlbfs-backed; vm.nr_hugepages must cover one guest's memory per concurrent VM); the JSON report holds the samples, labelled with their page size")
	plain := cmd.RunE
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if sizes == "" {
			return plain(cmd, args)
		}
		return runPageSizeBench(cmd, sizes)
	}
}

// pageSizeReport is the JSON document of a page-size comparison.
type pageSizeReport struct {
	Corpus  string                 `json:"corpus"`
	Pod     string                 `json:"pod"`
	Date    string                 `json:"date"`
	Sizes   []uint32               `json:"page_sizes"`
	Rows    []bench.PageSizeRow    `json:"rows"`
	Samples []bench.PageSizeSample `json:"samples"`
}

func runPageSizeBench(cmd *cobra.Command, sizeList string) error {
	fl := cmd.Flags()
	str := func(name string) string { v, _ := fl.GetString(name); return v }
	var sizes []uint32
	for _, s := range splitList(sizeList) {
		ps, err := parsePageSize("page-sizes", s)
		if err != nil {
			return err
		}
		sizes = append(sizes, ps)
	}
	c, err := openCorpus(str("corpus"))
	if err != nil {
		return err
	}
	runs, _ := fl.GetInt("runs")
	vcpus, _ := fl.GetInt("vcpus")
	nice, _ := fl.GetInt("server-nice")
	if err := prio.Check(nice); err != nil {
		return fmt.Errorf("--server-nice: %w", err)
	}
	o := bench.Options{Corpus: c, Workloads: splitList(str("workloads")), Strategies: splitList(str("strategies")),
		Runs: runs, VCPUs: vcpus, Log: os.Stderr, ServerNice: nice}
	for _, s := range splitList(str("concurrency")) {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return fmt.Errorf("--concurrency: %q is not a positive integer", s)
		}
		o.Concurrency = append(o.Concurrency, n)
	}
	if q, _ := fl.GetBool("quick"); q && len(o.Workloads) == 0 {
		for _, w := range c.Workloads[:min(2, len(c.Workloads))] {
			o.Workloads = append(o.Workloads, w.Name)
		}
	}
	if o.Bin, err = os.Executable(); err != nil {
		return err
	}
	if o.WorkDir = str("work-dir"); o.WorkDir == "" {
		d, err := os.MkdirTemp("", "aquifer-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		o.WorkDir = d
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	local, _ := fl.GetBool("local-images")
	// A pod per workload (its memory nodes keep every segment published).
	var podKind string
	n := 0
	newPod := func(ctx context.Context) (bench.Pod, error) {
		n++
		dir := filepath.Join(o.WorkDir, fmt.Sprintf("pod%d", n))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		pod, err := startPod(ctx, o.Bin, dir, local, o.ServerNice)
		if err == nil {
			podKind = pod.Kind()
		}
		return pod, err
	}
	samples, err := bench.RunPageSizes(ctx, o, sizes, newPod)
	if err != nil {
		return err
	}
	rows := bench.PageSizeTable(samples, o.Strategies, o.Concurrency, sizes)
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "corpus %s, %s (one pod per workload); end-to-end = restore + invocation of a separate guest process, %d vCPUs\n", c.Kind(), podKind, o.VCPUs)
	bench.WritePageSizeTable(out, rows, o.Strategies, sizes)
	if j := str("json"); j != "" {
		rep := pageSizeReport{Corpus: c.Kind(), Pod: podKind, Date: time.Now().UTC().Format(time.RFC3339), Sizes: sizes, Rows: rows, Samples: samples}
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := atomicfile.WriteFile(j, append(b, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(out, "JSON report: %s\n", j)
	}
	return nil
}
