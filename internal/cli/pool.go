package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/aquifer-pool/aquifer/pagerd"
	"github.com/spf13/cobra"
)

func init() {
	var api string
	publish := &cobra.Command{
		Use:   "publish IMAGE --name NAME",
		Short: "Publish an Aquifer image into the pool: hot segment to CXL, cold segment to the memory nodes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, _ := cmd.Flags().GetString("name")
			if name == "" {
				return fmt.Errorf("--name is required")
			}
			s, err := pagerd.NewClient(api).Publish(cmd.Context(), absPath(args[0]), name)
			if err != nil {
				return err
			}
			where := "RDMA only (not in CXL)"
			if s.Hot != nil {
				where = fmt.Sprintf("CXL descriptor %d gen %d", s.Hot.Descriptor, s.Hot.Gen)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published %s: hot %d bytes (%s), cold %d bytes on memory nodes\n", s.Name, s.HotBytes, where, s.ColdBytes)
			return nil
		},
	}
	publish.Flags().String("name", "", "snapshot name")
	publish.Flags().StringVar(&api, "api", "/run/aquifer/api.sock", "pager daemon control socket")

	p := &cobra.Command{Use: "pool", Short: "Inspect and manage the pool's snapshots (through the pager daemon)"}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List published snapshots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := pagerd.NewClient(api).Snapshots(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tHOT\tHOT TIER\tCOLD\tPUBLISHED")
			for _, s := range l {
				tier := "rdma (demoted)"
				if s.Hot != nil {
					tier = "cxl"
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\n", s.Name, s.HotBytes, tier, s.ColdBytes, s.Published.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a snapshot from the pool",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return pagerd.NewClient(api).RemoveSnapshot(cmd.Context(), args[0])
		},
	}
	for _, c := range []*cobra.Command{ls, rm} {
		c.Flags().StringVar(&api, "api", "/run/aquifer/api.sock", "pager daemon control socket")
		p.AddCommand(c)
	}
	register(publish, p)
}
