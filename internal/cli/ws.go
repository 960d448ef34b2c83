package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/aquifer-pool/aquifer/wset"
	"github.com/spf13/cobra"
)

func init() {
	ws := &cobra.Command{
		Use:   "ws",
		Short: "Working-set files: merge recordings, show their contents, bind one to its memory",
	}
	var out string
	merge := &cobra.Command{
		Use:   "merge A B... -o OUT",
		Short: "Union of the first touches of several recordings of one function, in a stable order",
		Long: `merge reduces every input to its first touches and writes their union: a page
touched by several inputs keeps its earliest time and all kinds; ties are
broken by argument order. The output is written atomically.

Inputs recorded from different memories are refused (a merge is of
recordings of one snapshot). The merge is bound to the inputs' memory when
every input is bound to it; with an input that does not say which memory it
is from (format version 1) the merge is unbound too, with a warning.`,
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
	var bindMem, bindOut string
	bind := &cobra.Command{
		Use:   "bind --mem MEM FILE [-o OUT]",
		Short: "Bind a working set to the memory it was recorded from (for files written before format version 2)",
		Long: `bind writes FILE again (or OUT) bound to the memory file MEM: it records MEM's
fingerprint (size and xxhash64 of its content) in the working set, so that
aquifer convert can check it is used with that memory. Use it for working
sets written before format version 2, which do not say which memory they
are from, when you know MEM is that memory. A working set already bound to
another memory is refused (record it again from MEM instead).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runWSBind(cmd, args[0], bindMem, bindOut) },
	}
	bind.Flags().StringVar(&bindMem, "mem", "", "snapshot memory file the working set was recorded from (required)")
	bind.Flags().StringVarP(&bindOut, "out", "o", "", "output working-set file (default: FILE, rewritten atomically)")
	bind.MarkFlagRequired("mem")
	ws.AddCommand(merge, show, bind)
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
	if m.Memory == nil {
		var unbound []string
		bound := false
		for i, t := range ts {
			if t.Memory == nil {
				unbound = append(unbound, inputs[i])
			} else {
				bound = true
			}
		}
		if bound {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: the merge %s is unbound: some inputs do not say which memory they were recorded from (%s); bind them first with aquifer ws bind --mem MEM FILE\n",
				out, strings.Join(unbound, ", "))
		}
	}
	if err := wset.WriteFile(out, m); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: %d pages from %d recordings, %s\n", out, len(m.Accesses), len(ts), bindingText(m))
	return nil
}

// bindingText says which memory t was recorded from.
func bindingText(t *wset.Trace) string {
	if t.Memory == nil {
		return "unbound (does not say which memory it was recorded from)"
	}
	return fmt.Sprintf("recorded from the memory with %s", t.Memory)
}

// runWSBind is aquifer ws bind: the working set at path bound to the
// memory file mem, written atomically to out (default path).
func runWSBind(cmd *cobra.Command, path, mem, out string) error {
	t, err := wset.ReadFile(path)
	if err != nil {
		return err
	}
	fp, err := wset.FingerprintFile(mem)
	if err != nil {
		return err
	}
	switch t.BindingTo(fp) {
	case wset.Bound:
		if out == "" || out == path {
			fmt.Fprintf(cmd.OutOrStdout(), "%s: already bound to %s (%s), unchanged\n", path, mem, fp)
			return nil
		}
	case wset.Foreign:
		return fmt.Errorf("%s is bound to another memory (%s) than %s (%s): record the working set again from %s (aquifer handle --mem %s --record FILE)",
			path, t.Memory, mem, fp, mem, mem)
	}
	if err := t.Bind(fp); err != nil {
		return err
	}
	if out == "" {
		out = path
	}
	if err := wset.WriteFile(out, t); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: bound to %s (%s)\n", out, mem, fp)
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
	fmt.Fprintf(w, "source      %s\npage size   %d\nmemory      %d bytes, %s\naccesses    %d (%d distinct pages)\n", t.Source, t.PageSize, t.MemSize, bindingText(t), len(t.Accesses), len(ft))
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
		MemXXH64     string `json:"mem_xxh64,omitempty"`
		Accesses     int    `json:"accesses"`
		DistinctPage int    `json:"distinct_pages"`
		Records      []rec  `json:"records"`
	}{t.Source, t.PageSize, t.MemSize, "", len(t.Accesses), distinct, []rec{}}
	if t.Memory != nil {
		v.MemXXH64 = fmt.Sprintf("%016x", t.Memory.XXH64)
	}
	for _, a := range acc {
		v.Records = append(v.Records, rec{a.Page, int64(a.T), a.Insn, a.Kind.String(), a.CPU})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// checkWSMemory applies wset.CheckMemory to working sets (files paths,
// decoded ts) about to be used with the memory file mem, for commands that
// do not convert (convert checks inside snapimage.Convert, from its own read
// of the memory): one read of mem for its fingerprint, warnings on stderr,
// the first refusal returned.
func checkWSMemory(cmd *cobra.Command, mem string, allowForeign bool, paths []string, ts []*wset.Trace) error {
	fp, err := wset.FingerprintFile(mem)
	if err != nil {
		return err
	}
	for i, t := range ts {
		warn, err := wset.CheckMemory(t, paths[i], mem, fp, allowForeign)
		if err != nil {
			return err
		}
		if warn != "" {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", warn)
		}
	}
	return nil
}
