package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/aquifer-pool/aquifer/control/member"
	"github.com/spf13/cobra"
)

func init() {
	var c member.Config
	cmd := &cobra.Command{
		Use:   "etcd --data-dir DIR [--client-addr HOST:PORT]",
		Short: "Run a control-plane (etcd) member for pods whose daemons use --etcd-endpoints",
		Long: `etcd runs a single etcd member in this process, the control plane that pager
daemons started with serve --embedded --etcd-endpoints http://HOST:PORT share:
the catalog, leases, fencing tokens and memory-node membership. It prints its
client endpoint and serves until interrupted; its data stays in --data-dir.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			m, err := member.Start(ctx, c)
			if err != nil {
				return err
			}
			defer m.Stop()
			fmt.Fprintf(cmd.OutOrStdout(), "etcd member %s serving clients at %s (data %s)\n", c.Name, m.Endpoints[0], c.Dir)
			<-ctx.Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Dir, "data-dir", "", "data directory (required)")
	f.StringVar(&c.ClientAddr, "client-addr", "127.0.0.1:2379", "address clients connect to")
	f.StringVar(&c.PeerAddr, "peer-addr", "127.0.0.1:2380", "address for peer traffic")
	f.StringVar(&c.Name, "name", "aquifer", "member name")
	f.StringVar(&c.InitialCluster, "initial-cluster", "", "every member of a new multi-member cluster: NAME=http://PEER-ADDR,... (default: this member alone)")
	cmd.MarkFlagRequired("data-dir")
	register(cmd)
}
