package cli

import (
	"fmt"

	"github.com/aquifer-pool/aquifer/baseline"
	"github.com/aquifer-pool/aquifer/wset"
	"github.com/spf13/cobra"
)

func init() {
	b := &cobra.Command{Use: "baseline", Short: "Prepare the files of the REAP and FaaSnap baselines"}
	var mem, ws, out, pageSize string
	var allowForeign bool
	reap := &cobra.Command{
		Use:   "reap --mem MEM --ws RECORDING --out WSFILE [--page-size 2MiB]",
		Short: "Write REAP's working-set file (pages of the recording, offset order) for aquifer handle --reap-ws",
		Long: `reap writes REAP's working-set file: the recording's pages in offset order.
With --page-size 2MiB it is for a 2 MiB (hugetlbfs) guest: the recording is
coarsened to the 2 MiB pages it touched and whole 2 MiB pages are stored.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			tr, err := wset.ReadFile(ws)
			if err != nil {
				return err
			}
			if err := checkWSMemory(cmd, mem, allowForeign, []string{ws}, []*wset.Trace{tr}); err != nil {
				return err
			}
			if pageSize != "" {
				ps, err := parsePageSize("page-size", pageSize)
				if err != nil {
					return err
				}
				if tr, err = tr.Coarsen(ps); err != nil {
					return err
				}
			}
			if err := baseline.BuildREAP(mem, tr, out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "REAP working set: %s\n", out)
			return nil
		},
	}
	fs := &cobra.Command{
		Use:   "faasnap --mem MEM --ws RECORDING --out DIR",
		Short: "Write FaaSnap's loading set and mapping plan for aquifer guest run --backend faasnap",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			tr, err := wset.ReadFile(ws)
			if err != nil {
				return err
			}
			if err := checkWSMemory(cmd, mem, allowForeign, []string{ws}, []*wset.Trace{tr}); err != nil {
				return err
			}
			plan, err := baseline.BuildFaaSnap(mem, tr, out)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "FaaSnap plan: %s\n", plan)
			return nil
		},
	}
	for c, outHelp := range map[*cobra.Command]string{
		reap: "REAP working-set file to write",
		fs:   "directory to write the loading set and mapping plan into",
	} {
		c.Flags().StringVar(&mem, "mem", "", "snapshot memory file")
		c.Flags().StringVar(&ws, "ws", "", "recorded working set (aquifer handle --record or corpus capture)")
		c.Flags().StringVar(&out, "out", "", outHelp)
		c.Flags().BoolVar(&allowForeign, "allow-foreign-ws", false, "use a recording made from another memory than --mem (refused without it)")
		c.MarkFlagRequired("mem")
		c.MarkFlagRequired("ws")
		c.MarkFlagRequired("out")
		b.AddCommand(c)
	}
	reap.Flags().StringVar(&pageSize, "page-size", "", "guest page size: 4KiB or 2MiB (default: the recording's)")
	register(b)
}
