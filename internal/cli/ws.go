package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/aquifer-pool/aquifer/wset"
	"github.com/spf13/cobra"
)

func init() {
	ws := &cobra.Command{
		Use:   "ws",
		Short: "Working-set files: merge recordings, show their contents",
	}
	var out string
	merge := &cobra.Command{
		Use:   "merge A B... -o OUT",
		Short: "Union of the first touches of several recordings of one function, in a stable order",
		Long: `merge reduces every input to its first touches and writes their union: a page
touched by several inputs keeps its earliest time and all kinds; ties are
broken by argument order. The output is written atomically.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runWSMerge(cmd, args, out) },
	}
	merge.Flags().StringVarP(&out, "out", "o", "", "output working-set file (required)")
	merge.MarkFlagRequired("out")

	var (
		limit  int
		asJSON bool
	)
	show := &cobra.Command{
		Use:   "show FILE",
		Short: "Print a working-set file's header and accesses",
		Args:  cobra.ExactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return runWSShow(cmd, args[0], limit, asJSON) },
	}
	show.Flags().IntVar(&limit, "limit", 50, "print at most this many accesses (-1: all)")
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	ws.AddCommand(merge, show)
	register(ws)
}

// runWSMerge is aquifer ws merge: the union of the inputs' first touches,
// written atomically to out.
func runWSMerge(cmd *cobra.Command, inputs []string, out string) error {
	var ts []*wset.Trace
	for _, p := range inputs {
		t, err := wset.ReadFile(p)
		if err != nil {
			return err
		}
		ts = append(ts, t)
	}
	m, err := wset.Merge(ts...)
	if err != nil {
		return err
	}
	if err := wset.WriteFile(out, m); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: %d pages from %d recordings\n", out, len(m.Accesses), len(ts))
	return nil
}

// runWSShow is aquifer ws show: the header of the working-set file at path
// and its first limit accesses (all if limit < 0), as a table or JSON.
func runWSShow(cmd *cobra.Command, path string, limit int, asJSON bool) error {
	t, err := wset.ReadFile(path)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	ft := t.FirstTouches()
	acc := t.Accesses
	if limit >= 0 && len(acc) > limit {
		acc = acc[:limit]
	}
	if asJSON {
		return showWSJSON(w, t, len(ft), acc)
	}
	fmt.Fprintf(w, "source      %s\npage size   %d\nmemory      %d bytes\naccesses    %d (%d distinct pages)\n", t.Source, t.PageSize, t.MemSize, len(t.Accesses), len(ft))
	if len(t.Accesses) > 0 {
		fmt.Fprintf(w, "duration    %v\n", t.Accesses[len(t.Accesses)-1].T)
	}
	fmt.Fprintf(w, "%8s %12s %14s %12s %4s %3s\n", "#", "page", "t", "insn", "kind", "cpu")
	for i, a := range acc {
		fmt.Fprintf(w, "%8d %12d %14v %12d %4s %3d\n", i, a.Page, a.T, a.Insn, a.Kind, a.CPU)
	}
	if len(acc) < len(t.Accesses) {
		fmt.Fprintf(w, "... %d more (use --limit -1 for all)\n", len(t.Accesses)-len(acc))
	}
	return nil
}

// showWSJSON prints t's header, its distinct page count and the accesses
// acc as indented JSON.
func showWSJSON(w io.Writer, t *wset.Trace, distinct int, acc []wset.Access) error {
	type rec struct {
		Page uint64 `json:"page"`
		TNS  int64  `json:"t_ns"`
		Insn uint64 `json:"insn,omitempty"`
		Kind string `json:"kind"`
		CPU  uint8  `json:"cpu"`
	}
	v := struct {
		Source       string `json:"source"`
		PageSize     uint32 `json:"page_size"`
		MemSize      uint64 `json:"mem_size"`
		Accesses     int    `json:"accesses"`
		DistinctPage int    `json:"distinct_pages"`
		Records      []rec  `json:"records"`
	}{t.Source, t.PageSize, t.MemSize, len(t.Accesses), distinct, []rec{}}
	for _, a := range acc {
		v.Records = append(v.Records, rec{a.Page, int64(a.T), a.Insn, a.Kind.String(), a.CPU})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
