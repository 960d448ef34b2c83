package cli

import (
	"fmt"
	"strings"

	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/spf13/cobra"
)

func init() {
	c := &cobra.Command{
		Use:   "cert",
		Short: "Issue certificates of the cluster CA for memory nodes and hosts (mutual TLS on the memory-node protocol)",
		Long: `cert issues, from the cluster CA (the one aquifer etcd creates; --ca-dir
must hold ca.key, so run it where the CA lives), the certificate one process
presents on the memory-node protocol, into a directory of its own (mode 0700)
holding ca.crt and the pair (files 0600). Copy that directory to the process's
machine; never copy ca.key. An existing valid certificate is kept.

  aquifer cert memnode NAME --ca-dir CA --out DIR --addr IP   then aquifer memnode --tls-dir DIR
  aquifer cert host POD/HOST --ca-dir CA --out DIR            then aquifer serve --memnode-tls-dir DIR

See docs/security.md.`,
	}
	var caDir, out string
	var addrs []string
	node := &cobra.Command{
		Use:   "memnode NAME --ca-dir DIR --out DIR [--addr HOST]...",
		Short: "Issue memory node NAME's certificate (CN \"memnode NAME\"), covering the addresses hosts reach it by",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := memnode.IssueNodeCert(caDir, out, args[0], addrs)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s, %s (run aquifer memnode --tls-dir %s)\n", memnode.NodeIdentity(args[0]), p.CertFile, p.KeyFile, out)
			return nil
		},
	}
	node.Flags().StringSliceVar(&addrs, "addr", nil, "IP addresses or DNS names hosts reach the node by (localhost and loopback are always covered)")
	host := &cobra.Command{
		Use:   "host POD/HOST --ca-dir DIR --out DIR",
		Short: "Issue host HOST of pod POD's certificate (CN \"host POD/HOST\")",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pod, h, ok := strings.Cut(args[0], "/")
			if !ok || pod == "" || h == "" {
				return fmt.Errorf("%q: give POD/HOST, the --pod and --host-name the host's aquifer serve runs with", args[0])
			}
			p, err := memnode.IssueHostCert(caDir, out, pod, h)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s, %s (run aquifer serve --memnode-tls-dir %s)\n", memnode.HostIdentity(pod, h), p.CertFile, p.KeyFile, out)
			return nil
		},
	}
	for _, sc := range []*cobra.Command{node, host} {
		sc.Flags().StringVar(&caDir, "ca-dir", "", "directory of the cluster CA (ca.crt and ca.key; aquifer etcd's DATA-DIR/tls)")
		sc.Flags().StringVar(&out, "out", "", "directory to write ca.crt and the certificate to")
		sc.MarkFlagRequired("ca-dir")
		sc.MarkFlagRequired("out")
	}
	c.AddCommand(node, host)
	register(c)
}
