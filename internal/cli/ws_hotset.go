package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/aquifer-pool/aquifer/pagestat"
	"github.com/aquifer-pool/aquifer/wset"
	"github.com/spf13/cobra"
)

// aquifer ws hotset: the hot-set trade-off of 4 KiB against 2 MiB pages
// (docs/format.md, "Hot sets of 2 MiB pages"). In its own file, after
// ws.go, so that the ws command exists when it is added.
func init() {
	var (
		mem, rec string
		evals    []string
		mins     []int
		asJSON   bool
		allow    bool
	)
	cmd := &cobra.Command{
		Use:   "hotset --mem MEM --record REC.ws --eval EVAL.ws[,...]",
		Short: "Hot set from a 4 KiB recording at 4 KiB and 2 MiB pages: bytes pre-installed against faults other invocations take",
		Long: `hotset measures how the hot set chosen from a recording (REC) serves other
invocations (EVAL traces) of the same snapshot: for the 4 KiB image (every
touched non-zero page hot) and for 2 MiB images whose hot pages are the 2 MiB
pages of which the recording touched at least N 4 KiB pages (--min-touched),
it prints the hot pages, the bytes the pre-install copies into the guest and
reads from the hot tier, and per evaluation trace (mean) the non-zero pages
touched but not hot (faults to the cold tier) and the hot pages not touched
(pre-installed for nothing).

Traces recorded from another memory than MEM are refused (their pages are
not MEM's), unless --allow-foreign-ws; traces that do not say which memory
they are from (format version 1) are used with a warning.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := wset.ReadFile(rec)
			if err != nil {
				return err
			}
			var ev []*wset.Trace
			for _, e := range evals {
				t, err := wset.ReadFile(e)
				if err != nil {
					return err
				}
				ev = append(ev, t)
			}
			if err := checkWSMemory(cmd, mem, allow, append([]string{rec}, evals...), append([]*wset.Trace{r}, ev...)); err != nil {
				return err
			}
			f, err := os.Open(mem)
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			pts, err := pagestat.HotSetTradeoff(f, st.Size(), r, ev, []int{2 << 20}, mins)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(pts)
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "page size\tmin touched\thot pages\tinstalled MiB\tstored MiB\teval faults\teval wasted\t")
			for _, p := range pts {
				ps := "4 KiB"
				if p.PageSize == 2<<20 {
					ps = "2 MiB"
				}
				fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t\n", ps, p.MinTouched, p.HotPages,
					float64(p.InstalledBytes)/(1<<20), float64(p.StoredBytes)/(1<<20), p.EvalFaults, p.EvalWasted)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&mem, "mem", "", "snapshot memory file")
	f.StringVar(&rec, "record", "", "4 KiB recording the hot set is chosen from")
	f.StringSliceVar(&evals, "eval", nil, "4 KiB traces of other invocations to measure it on")
	f.IntSliceVar(&mins, "min-touched", []int{1, 2, 4, 8, 16, 32}, "2 MiB thresholds: 4 KiB pages the recording must touch for a 2 MiB page to be hot")
	f.BoolVar(&asJSON, "json", false, "print the points as JSON")
	f.BoolVar(&allow, "allow-foreign-ws", false, "use traces recorded from another memory than --mem (refused without it)")
	cmd.MarkFlagRequired("mem")
	cmd.MarkFlagRequired("record")
	for _, c := range rootCmd.Commands() {
		if c.Name() == "ws" {
			c.AddCommand(cmd)
			return
		}
	}
	panic("cli: the ws command is not registered before ws_hotset.go")
}
