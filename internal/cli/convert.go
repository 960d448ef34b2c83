package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/wset"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func init() {
	var (
		mem, ws, out, budget, regions, pageSize string
		extentPages                             uint32
		asJSON, allowForeign                    bool
	)
	cmd := &cobra.Command{
		Use:   "convert --mem MEM --ws WS --out IMG [--hot-budget PAGES|PERCENT]",
		Short: "Build an Aquifer image (zero pages dropped, hot segment, cold segment) from a memory file and a working set",
		Long: `convert re-lays out a Firecracker guest memory file by hotness: zero pages
are stored nowhere, the working set's non-zero pages form the hot segment in
first-touch order (up to --hot-budget pages, or a percentage of all pages),
and the remaining non-zero pages form the cold segment: over-budget touched
pages first in touch order, then untouched pages in offset order, in
extents of --extent-pages. The image is written atomically. Format:
docs/format.md.

--page-size 2MiB makes the image of a hugetlbfs-backed guest (Firecracker's
huge_pages "2M"): zero, hot and cold are decided per 2 MiB page (a 4 KiB
recording is coarsened: a 2 MiB page is hot when the recording touched any
of its 4 KiB pages, in first-touch order), and each stored 2 MiB page holds
only its non-zero 4 KiB sub-pages, rebuilt when it is installed. Without the
flag the page size is the recording's (a recording made by aquifer handle
on a 2 MiB guest is in 2 MiB pages), else 4 KiB.

A working set is bound to the memory it was recorded from (its file holds
the xxhash64 of that memory file, docs/format.md §1). convert computes the
memory's fingerprint while it reads it and refuses a working set recorded
from another memory, naming both fingerprints: a recording of another
function or of an older snapshot of this one makes the wrong pages hot.
--allow-foreign-ws converts with it anyway (a warning). A working set that
does not say which memory it is from (written before format version 2)
converts with a warning; aquifer ws bind --mem MEM FILE binds it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := snapimage.ConvertOptions{ExtentPages: extentPages, TraceName: ws, AllowForeignWS: allowForeign}
			var err error
			if pageSize != "" {
				if opt.PageSize, err = parsePageSize("page-size", pageSize); err != nil {
					return err
				}
			}
			if opt.HotBudget, err = snapimage.ParseBudget(budget); err != nil {
				return err
			}
			if ws != "" {
				if opt.Trace, err = wset.ReadFile(ws); err != nil {
					return err
				}
			}
			if regions != "" {
				if opt.Regions, err = parseRegions(regions); err != nil {
					return err
				}
			}
			var bar *progressBar
			if st, err := os.Stat(mem); err == nil {
				bar = newProgressBar(st.Size(), "convert")
				opt.Progress = bar.setTotal
			}
			st, err := snapimage.Convert(mem, out, opt)
			bar.finish()
			if err != nil {
				return err
			}
			for _, warn := range st.Warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", warn)
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			fmt.Fprintf(w, "%s: %d pages of %d bytes: %d zero, %d hot, %d cold (%d touched over budget %s), %d touched zero\n",
				out, st.Pages, st.PageSize, st.ZeroPages, st.HotPages, st.ColdPages, st.OverBudgetPages, opt.HotBudget, st.TouchedZeroPages)
			fmt.Fprintf(w, "%s: %d bytes (metadata %d bytes: %d page-map runs, %d cold extents)\n", out, st.ImageBytes, st.MetadataBytes, st.Runs, st.Extents)
			if ws != "" {
				fmt.Fprintf(w, "%s: memory xxh64 %s, working set %s\n", out, st.MemoryXXH64, st.WorkingSet)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&mem, "mem", "", "Firecracker guest memory file (required)")
	f.StringVar(&ws, "ws", "", "working-set file (aquifer handle --record, corpus capture or ws merge); without it every page is cold")
	f.StringVar(&out, "out", "", "image file to write (required)")
	f.StringVar(&budget, "hot-budget", "all", "hot segment limit: a page count, a percentage of all pages (\"5%\") or \"all\"")
	f.StringVar(&regions, "regions", "", "guest memory regions as GPA:SIZE[,GPA:SIZE...] (sizes add up to the file; default one region at 0)")
	f.StringVar(&pageSize, "page-size", "", "guest page size: 4KiB or 2MiB (default: the recording's, else 4KiB)")
	f.Uint32Var(&extentPages, "extent-pages", 0, "maximum pages per cold extent (default 64 for 4 KiB pages, 1 for 2 MiB pages: 256 KiB or one page)")
	f.BoolVar(&asJSON, "json", false, "print the conversion statistics as JSON")
	f.BoolVar(&allowForeign, "allow-foreign-ws", false, "convert with a working set recorded from another memory than --mem (refused without it)")
	cmd.MarkFlagRequired("mem")
	cmd.MarkFlagRequired("out")
	register(cmd)
}

// parseRegions parses GPA:SIZE[,GPA:SIZE...]; addresses may be hex
// (0x...), sizes hex or a parseSize size (64MiB).
func parseRegions(s string) ([]snapimage.Region, error) {
	var out []snapimage.Region
	for _, part := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			return nil, fmt.Errorf("region %q: want GPA:SIZE", part)
		}
		gpa, err := strconv.ParseUint(a, 0, 64)
		if err != nil {
			return nil, fmt.Errorf("region %q: guest address: %w", part, err)
		}
		size, err := parseSize(b)
		if err != nil {
			size, err = strconv.ParseUint(b, 0, 64) // hex, as in Firecracker's layout
		}
		if err != nil || size == 0 {
			return nil, fmt.Errorf("region %q: size must be a positive size (4096, 3GiB, 0xC0000000)", part)
		}
		out = append(out, snapimage.Region{GuestAddr: gpa, Size: size})
	}
	return out, nil
}

// progressBar shows progress on stderr for work of at least 64 MiB, and
// only when stderr is a terminal. A nil *progressBar is valid and silent.
type progressBar struct{ bar *progressbar.ProgressBar }

func newProgressBar(total int64, desc string) *progressBar {
	if total < 64<<20 || !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil
	}
	return &progressBar{bar: progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionClearOnFinish(),
	)}
}

func (p *progressBar) set(done int64) {
	if p != nil {
		p.bar.Set64(done)
	}
}

func (p *progressBar) setTotal(done, total int64) {
	if p != nil {
		if p.bar.GetMax64() != total {
			p.bar.ChangeMax64(total)
		}
		p.bar.Set64(done)
	}
}

func (p *progressBar) finish() {
	if p != nil {
		p.bar.Finish()
	}
}
