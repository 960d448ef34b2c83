package cli

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/aquifer-pool/aquifer/pagestat"
	"github.com/aquifer-pool/aquifer/wset"
	"github.com/spf13/cobra"
)

func init() {
	var (
		tracePath string
		asJSON    bool
		pageSize  int
	)
	cmd := &cobra.Command{
		Use:   "inspect MEM",
		Short: "Page statistics of a guest memory file (zero, distinct, zero runs, working-set overlay)",
		Long: `inspect scans a Firecracker guest memory file and reports how many pages are
zero, how many non-zero pages are distinct by content, the length
distribution of zero-page runs and, with --trace, how many touched pages are
hot (non-zero) or zero. --json prints one object (schema: docs/format.md).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := pagestat.Options{PageSize: pageSize}
			if tracePath != "" {
				t, err := wset.ReadFile(tracePath)
				if err != nil {
					return err
				}
				opt.Trace = t
				if !cmd.Flags().Changed("page-size") {
					opt.PageSize = int(t.PageSize)
				}
			}
			var bar *progressBar
			if st, err := os.Stat(args[0]); err == nil {
				bar = newProgressBar(st.Size(), "inspect")
				opt.Progress = bar.set
			}
			s, err := pagestat.ScanFile(args[0], opt)
			bar.finish()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			pct := func(n uint64) float64 {
				if s.Pages == 0 {
					return 0
				}
				return 100 * float64(n) / float64(s.Pages)
			}
			fmt.Fprintf(out, "file            %s (%d bytes, %d pages of %d bytes)\n", s.Path, s.SizeBytes, s.Pages, s.PageSize)
			fmt.Fprintf(out, "zero pages      %d (%.2f%%)\n", s.ZeroPages, pct(s.ZeroPages))
			fmt.Fprintf(out, "non-zero pages  %d (%.2f%%), %d distinct, %d duplicates\n", s.NonzeroPages, pct(s.NonzeroPages), s.DistinctNonzeroPages, s.DuplicatePages)
			fmt.Fprintf(out, "zero runs       %d, longest %d pages\n", s.ZeroRuns.Count, s.ZeroRuns.Longest)
			for _, b := range s.ZeroRuns.Histogram {
				if b.Runs > 0 {
					fmt.Fprintf(out, "  %8d-%-8d pages: %8d runs, %10d pages\n", b.MinPages, b.MaxPages, b.Runs, b.Pages)
				}
			}
			if t := s.TraceStats; t != nil {
				fmt.Fprintf(out, "trace           %q: %d accesses, %d pages touched\n", t.TraceSource, t.TraceAccesses, t.TouchedPages)
				fmt.Fprintf(out, "hot pages       %d (%.2f%%), touched zero pages %d, written %d, executed %d\n", t.HotPages, pct(t.HotPages), t.TouchedZeroPages, t.WrittenPages, t.ExecPages)
				fmt.Fprintf(out, "cold pages      %d (%.2f%%)\n", t.ColdPages, pct(t.ColdPages))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&tracePath, "trace", "", "working-set file to overlay (hot_pages, touched_zero_pages)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object (schema in docs/format.md)")
	cmd.Flags().IntVar(&pageSize, "page-size", pagestat.DefaultPageSize, "page size in bytes, when no --trace gives it")
	register(cmd)
}
