package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/embed"
	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/rdma/verbs"
	"github.com/spf13/cobra"
)

func init() {
	var (
		listen, metrics, capacity, dataDir, secretFile, secretEnv, maxSeg, slab, name, rdmaDev string
		rdmaPort, gidIndex, maxUnauth                                                          int
		authTimeout                                                                            time.Duration
		mc                                                                                     embed.MemNodeConfig
	)
	cmd := &cobra.Command{
		Use:   "memnode --listen ADDR --capacity SIZE --data-dir DIR",
		Short: "Run a memory node of the cluster-wide cold (RDMA) tier",
		Long: `memnode holds immutable cold snapshot segments for the pods of a cluster in
large off-heap slabs and serves batched page reads of them (docs/rdma.md).

With --tls-dir DIR (ca.crt, memnode.crt, memnode.key: aquifer cert memnode)
hosts are admitted by mutual TLS: only hosts with a certificate of the
cluster CA (CN "host POD/HOST", aquifer cert host) get in, and all traffic
is encrypted. Without it only members of the pod are admitted: clients prove
knowledge of the pod's shared secret by HMAC challenge/response, and the node
proves it back. The secret is read from --secret-file (mode 0600), or else
from the environment variable named by --secret-env. Refused connections are
logged and counted.

With --etcd-endpoints (and --etcd-tls-dir, default --tls-dir) the node
registers itself in the control plane under its own lease (its address,
capacity and used bytes, reported every --usage-interval; hosts started with
serve --memnodes-from-control-plane find it there) and authorizes by the
cluster catalog it watches: a host reads only segments that published
snapshots list (or that it stored itself, or any within --put-grace of their
put), and deletes only its own segments or ones no snapshot lists. Without a
control plane every admitted client may read and delete everything.
A connection must pass admission within --auth-timeout, and at most
--max-unauthenticated connections may be waiting to (the oldest is closed
when a new one would exceed it), so a flood of idle connections costs the
node little and does not lock pod members out.

Segments are persisted in --data-dir (temp file, fsync, rename) and served
again after a restart. Prometheus metrics are on --metrics-listen at /metrics.

With --rdma the slabs are also registered with the RNIC for one-sided RDMA
READs (binary built with -tags rdma); on a machine without an RDMA device
the command says so and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := &mc.Config
			cfg.Listen, cfg.MetricsListen, cfg.DataDir, cfg.Name, cfg.Logger = listen, metrics, dataDir, name, slog.Default()
			cfg.MaxUnauthenticated, cfg.AuthTimeout = maxUnauth, authTimeout
			var err error
			if cfg.Capacity, err = parseSize(capacity); err != nil {
				return fmt.Errorf("--capacity: %w", err)
			}
			if cfg.MaxSegment, err = parseSize(maxSeg); err != nil {
				return fmt.Errorf("--max-segment: %w", err)
			}
			if cfg.SlabSize, err = parseSize(slab); err != nil {
				return fmt.Errorf("--slab-size: %w", err)
			}
			switch {
			case mc.TLSDir != "" && secretFile != "":
				return fmt.Errorf("--tls-dir and --secret-file: a node admits hosts either by mutual TLS or by the pod secret; give one")
			case mc.TLSDir != "":
			case secretFile != "":
				if cfg.Secret, err = memnode.ParseSecret(secretFile); err != nil {
					return err
				}
			case os.Getenv(secretEnv) != "":
				cfg.Secret = []byte(os.Getenv(secretEnv))
			default:
				return fmt.Errorf("no admission credentials: pass --tls-dir DIR (mutual TLS), or --secret-file FILE or $%s (the pod secret, at least 16 bytes, e.g. `head -c 32 /dev/urandom | base64`)", secretEnv)
			}
			if rdmaDev != "" {
				dev := rdmaDev
				if dev == "auto" {
					dev = ""
				}
				ep, err := verbs.NewEndpoint(verbs.Config{Device: dev, Port: rdmaPort, GIDIndex: gidIndex})
				if err != nil {
					return fmt.Errorf("--rdma: %w", err)
				}
				defer ep.Close()
				cfg.RDMA = ep
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return embed.RunMemNode(ctx, mc, func(addr, maddr string) {
				fmt.Fprintf(cmd.OutOrStdout(), "memnode listening on %s (metrics %s)\n", addr, maddr)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:7400", "address to serve clients on")
	f.StringVar(&capacity, "capacity", "", "slab memory to hold at most, e.g. 8GiB")
	f.StringVar(&dataDir, "data-dir", "", "directory that persists segments across restarts")
	f.StringVar(&metrics, "metrics-listen", "127.0.0.1:9400", "address for Prometheus /metrics (empty: off)")
	f.StringVar(&secretFile, "secret-file", "", "file holding the pod's shared admission secret")
	f.StringVar(&secretEnv, "secret-env", "AQUIFER_POD_SECRET", "environment variable holding the secret when --secret-file is not given")
	f.StringVar(&maxSeg, "max-segment", "64MiB", "largest segment a client may publish")
	f.StringVar(&slab, "slab-size", "1GiB", "size of each off-heap slab mapping")
	f.StringVar(&rdmaDev, "rdma", "", "also serve one-sided RDMA reads through this RNIC (e.g. mlx5_0, or auto); needs a binary built with -tags rdma")
	f.IntVar(&rdmaPort, "rdma-port", 1, "RNIC port for --rdma")
	f.IntVar(&gidIndex, "rdma-gid-index", 0, "GID index for --rdma on RoCE")
	f.StringVar(&name, "name", "", "node name reported to clients (default: the listen address)")
	f.IntVar(&maxUnauth, "max-unauthenticated", memnode.DefaultMaxUnauthenticated, "connections that may be waiting for admission at once (the oldest is closed beyond)")
	f.DurationVar(&authTimeout, "auth-timeout", memnode.DefaultAuthTimeout, "time a connection has to pass admission")
	f.StringVar(&mc.TLSDir, "tls-dir", "", "admit hosts by mutual TLS: directory holding ca.crt, memnode.crt and memnode.key (aquifer cert memnode)")
	f.StringSliceVar(&mc.EtcdEndpoints, "etcd-endpoints", nil, "register in this control plane (https://host:2379,...), report usage and authorize by the cluster catalog")
	f.StringVar(&mc.EtcdTLSDir, "etcd-tls-dir", "", "with --etcd-endpoints: directory holding ca.crt and this node's certificate (memnode.crt/.key, or client.crt/.key); default --tls-dir")
	f.StringVar(&mc.Advertise, "advertise-addr", "", "with --etcd-endpoints: address hosts reach this node at (default the listen address)")
	f.Int64Var(&mc.LeaseTTL, "lease-ttl", 10, "with --etcd-endpoints: seconds after which a silent node's registration expires")
	f.DurationVar(&mc.UsageInterval, "usage-interval", 2*time.Second, "with --etcd-endpoints: how often used bytes are reported")
	f.DurationVar(&mc.Grace, "put-grace", memnode.DefaultGrace, "with --etcd-endpoints: how long after a put any host may read a segment no published snapshot lists yet")
	cmd.MarkFlagRequired("capacity")
	cmd.MarkFlagRequired("data-dir")
	var api string
	drain := &cobra.Command{
		Use:   "drain ADDR",
		Short: "Move every segment off a memory node (before it leaves), through a host's pager daemon",
		Long: `drain asks the cluster's memory tier to copy every segment held by the memory
node at ADDR (host:port) to other nodes, back to the configured redundancy,
and returns once no snapshot keeps a segment there. New segments are no longer
placed on it. The node may then be stopped.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := apiClient(api).Drain(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "drained %s: no snapshot keeps a segment there\n", args[0])
			return nil
		},
	}
	apiFlag(drain, &api)
	cmd.AddCommand(drain)
	register(cmd)
}
