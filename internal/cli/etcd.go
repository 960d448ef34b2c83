package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/aquifer-pool/aquifer/embed"
	"github.com/spf13/cobra"
)

func init() {
	var c embed.EtcdConfig
	cmd := &cobra.Command{
		Use:   "etcd --data-dir DIR [--client-addr HOST:PORT]",
		Short: "Run a control-plane (etcd) member for pods whose daemons use --etcd-endpoints",
		Long: `etcd runs a single etcd member in this process, the control plane that pager
daemons started with serve --embedded --etcd-endpoints https://HOST:PORT
share: the catalog, leases, fencing tokens and memory-node membership. It
prints its client endpoint and serves until interrupted; its data stays in
--data-dir.

The member serves mutual TLS only (client-cert-auth, for clients and peers):
a connection without a certificate of the cluster's CA is refused. On first
start it creates, in --tls-dir (default DATA-DIR/tls, mode 0700, files 0600),
the cluster CA (ca.crt, ca.key), its own certificate (member-NAME.crt, covering
its addresses, localhost, this host's name and --tls-host) and the daemons'
client certificate (client.crt, client.key). Give daemons ca.crt, client.crt
and client.key in a directory of their own: serve --etcd-tls-dir DIR. Never
copy ca.key. See docs/security.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			m, err := embed.StartEtcd(ctx, c)
			if err != nil {
				return err
			}
			defer m.Stop()
			tlsDir := c.TLSDir
			if tlsDir == "" {
				tlsDir = filepath.Join(c.Dir, embed.TLSDirName)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "etcd member %s serving clients at %s (data %s; daemons: --etcd-endpoints %s --etcd-tls-dir %s)\n",
				c.Name, m.Endpoints[0], c.Dir, m.Endpoints[0], tlsDir)
			<-ctx.Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Dir, "data-dir", "", "data directory (required)")
	f.StringVar(&c.ClientAddr, "client-addr", "127.0.0.1:2379", "address clients connect to")
	f.StringVar(&c.PeerAddr, "peer-addr", "127.0.0.1:2380", "address for peer traffic")
	f.StringVar(&c.Name, "name", "aquifer", "member name")
	f.StringVar(&c.InitialCluster, "initial-cluster", "", "every member of a new multi-member cluster: NAME=https://PEER-ADDR,... (default: this member alone); members may share one --tls-dir")
	f.StringVar(&c.TLSDir, "tls-dir", "", "the cluster CA and certificates (default DATA-DIR/tls; created if missing)")
	f.StringSliceVar(&c.Hosts, "tls-host", nil, "extra DNS names or IP addresses clients reach this member by (its certificate covers them)")
	cmd.MarkFlagRequired("data-dir")
	register(cmd)
}
