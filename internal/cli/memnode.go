package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/rdma/verbs"
	"github.com/spf13/cobra"
)

func init() {
	var (
		listen, metrics, capacity, dataDir, secretFile, secretEnv, maxSeg, slab, name, rdmaDev string
		rdmaPort, gidIndex, maxUnauth                                                          int
		authTimeout                                                                            time.Duration
	)
	cmd := &cobra.Command{
		Use:   "memnode --listen ADDR --capacity SIZE --data-dir DIR",
		Short: "Run a memory node of the cluster-wide cold (RDMA) tier",
		Long: `memnode holds immutable cold snapshot segments for the pods of a cluster in
large off-heap slabs and serves batched page reads of them (docs/rdma.md).

Only members of the pod are admitted: clients prove knowledge of the pod's
shared secret by HMAC challenge/response, and the node proves it back. The
secret is read from --secret-file (mode 0600), or else from the environment
variable named by --secret-env. Refused connections are logged and counted.
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
			cfg := memnode.Config{Listen: listen, MetricsListen: metrics, DataDir: dataDir, Name: name, Logger: slog.Default(),
				MaxUnauthenticated: maxUnauth, AuthTimeout: authTimeout}
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
			case secretFile != "":
				if cfg.Secret, err = memnode.ParseSecret(secretFile); err != nil {
					return err
				}
			case os.Getenv(secretEnv) != "":
				cfg.Secret = []byte(os.Getenv(secretEnv))
			default:
				return fmt.Errorf("no pod secret: pass --secret-file FILE or set $%s (at least 16 bytes, e.g. `head -c 32 /dev/urandom | base64`)", secretEnv)
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
			return memnode.Run(ctx, cfg, func(addr, maddr string) {
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
