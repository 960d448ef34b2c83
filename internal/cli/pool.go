package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/aquifer-pool/aquifer/api/client"
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
			s, err := apiClient(api).Publish(cmd.Context(), absPath(args[0]), name)
			if err != nil {
				return err
			}
			where := "hot set served from its RDMA copy (not in CXL)"
			if s.HotTier == "cxl" {
				where = "hot set in CXL"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published %s: hot %d bytes (%s), cold %d bytes on memory nodes\n", s.Name, s.HotBytes, where, s.ColdBytes)
			return nil
		},
	}
	publish.Flags().String("name", "", "snapshot name")
	apiFlag(publish, &api)

	p := &cobra.Command{Use: "pool", Short: "Inspect and manage the pool's snapshots (through the pager daemon)"}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List published snapshots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := apiClient(api).Snapshots(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tHOT\tHOT TIER\tCOLD\tPUBLISHED")
			for _, s := range l {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\n", s.Name, s.HotBytes, s.HotTier, s.ColdBytes, s.Published.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a snapshot from the pool",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := apiClient(api).RemoveSnapshot(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
			return nil
		},
	}
	tier := func(op, short string, f func(c *client.Client) func(context.Context, string) error) *cobra.Command {
		return &cobra.Command{
			Use:   op + " NAME",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := f(apiClient(api))(cmd.Context(), args[0]); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%sd %s in this host's pod\n", op, args[0])
				return nil
			},
		}
	}
	promote := tier("promote", "Place a snapshot's hot set in this pod's CXL region now (demoting colder ones as needed)",
		func(c *client.Client) func(context.Context, string) error { return c.Promote })
	demote := tier("demote", "Drop a snapshot's hot set from this pod's CXL region: restores here read its RDMA copy until it is hot again",
		func(c *client.Client) func(context.Context, string) error { return c.Demote })
	for _, c := range []*cobra.Command{ls, rm, promote, demote} {
		apiFlag(c, &api)
		p.AddCommand(c)
	}
	register(publish, p)
}

// apiFlag adds the --api flag every daemon client has.
func apiFlag(c *cobra.Command, api *string) {
	c.Flags().StringVar(api, "api", "", "pager daemon control socket (default $"+client.EnvAPI+", else "+client.DefaultSocket+")")
}

// apiClient returns a client of the daemon at flag, $AQUIFER_API or the
// default socket.
func apiClient(flag string) *client.Client { return client.New(client.Socket(flag), client.Options{}) }
