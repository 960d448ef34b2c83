package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/aquifer-pool/aquifer/pagerd"
	"github.com/aquifer-pool/aquifer/pool"
	"github.com/spf13/cobra"
)

func init() {
	var api, sockDir, images, dataDir, transport, cxlSize, cxlPath, cxlChunk, secretFile string
	var memnodeAddrs []string
	var workers, memnodes int
	var earlyResume bool
	var etcdEndpoints []string
	var podName string
	var embedded bool
	cmd := &cobra.Command{
		Use:   "serve (--embedded | --images DIR)",
		Short: "Run the per-host pager daemon: restore many VMs from the pool",
		Long: `serve runs the pager daemon. Its control API (HTTP on the Unix socket --api,
mode 0600) prepares restores: PUT /v1/vms/{id} {"snapshot": NAME} returns the
UFFD socket to give Firecracker as mem_backend.backend_path; GET
/v1/vms/{id}/ready returns once the hot set is installed, when the VM may be
resumed. See docs/operations.md.

With --embedded the daemon also runs the whole pod in this process: an
embedded etcd member, an emulated CXL region (/dev/shm) and --memnodes memory
nodes on loopback; aquifer publish / pool ls / pool rm talk to it through
the same API. With --memnode-addrs it uses those aquifer memnode processes
instead (over tcp, admitted with the pod secret --secret-file). aquifer pool
init prepares the data directory, secret and CXL region beforehand; without
it they are created on first start.

With --images DIR, snapshots are Aquifer images DIR/NAME.img on local disk
(no tiers).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var p pagerd.Pool
			switch {
			case embedded:
				size, err := parseSize(cxlSize)
				if err != nil {
					return fmt.Errorf("--cxl-size: %w", err)
				}
				chunk, err := parseSize(cxlChunk)
				if err != nil {
					return fmt.Errorf("--cxl-chunk: %w", err)
				}
				tr := transport
				if len(memnodeAddrs) > 0 && !cmd.Flags().Changed("rdma") {
					tr = "tcp"
				}
				e, err := pool.StartEmbedded(ctx, pool.EmbeddedConfig{Dir: dataDir, MemNodes: memnodes,
					CXLSize: int64(size), CXLPath: cxlPath, ChunkSize: int64(chunk), Transport: tr,
					ExternalMemNodes: memnodeAddrs, SecretFile: secretFile, EtcdEndpoints: etcdEndpoints, Name: podName})
				if err != nil {
					return err
				}
				defer e.Close()
				slog.Info("embedded pod running", "etcd", e.Plane.Endpoints, "memnodes", e.Addrs, "rdma", tr, "data_dir", dataDir)
				p = e.Pool
			case images != "":
				p = &pagerd.DirPool{Dir: images}
			default:
				return fmt.Errorf("give --embedded (a whole pod in this process) or --images DIR (local images)")
			}
			if sockDir == "" {
				sockDir = filepath.Join(filepath.Dir(api), "vms")
			}
			cfg := pagerd.Config{Pool: p, SocketDir: sockDir, AllowUID: -1}
			cfg.Pager.Workers = workers
			cfg.Pager.EarlyResume = earlyResume
			d, err := pagerd.New(cfg)
			if err != nil {
				return err
			}
			defer d.Close()
			slog.Info("pager daemon serving", "api", api, "socket_dir", sockDir)
			return d.Serve(ctx, api)
		},
	}
	f := cmd.Flags()
	f.StringVar(&api, "api", "/run/aquifer/api.sock", "control API socket")
	f.StringVar(&sockDir, "socket-dir", "", "directory of per-VM UFFD sockets (default: vms/ beside --api)")
	f.StringVar(&images, "images", "", "serve Aquifer images NAME.img from this directory (no tiers)")
	f.BoolVar(&embedded, "embedded", false, "run etcd, an emulated CXL region and memory nodes in this process")
	f.StringVar(&dataDir, "data-dir", "/var/lib/aquifer", "with --embedded: data directory (etcd, memory nodes, pod secret)")
	f.StringSliceVar(&etcdEndpoints, "etcd-endpoints", nil, "with --embedded: use this external etcd cluster (http://host:2379,...) for the control plane instead of an embedded member")
	f.StringVar(&podName, "pod", "pod0", "with --embedded: pod name (its CXL coordination keys in etcd and its default region path); one pod per etcd cluster for now")
	f.IntVar(&memnodes, "memnodes", 3, "with --embedded: memory nodes")
	f.StringVar(&transport, "rdma", "emu", "with --embedded: how the pager reads memory nodes: emu (latency model, emulated) or tcp (loopback network)")
	f.StringVar(&cxlSize, "cxl-size", "1GiB", "with --embedded: size of the emulated CXL region")
	f.StringVar(&cxlPath, "cxl-path", "", "with --embedded: emulated CXL region file (default /dev/shm/aquifer-pod0-cxl)")
	f.StringVar(&cxlChunk, "cxl-chunk", "64MiB", "with --embedded: chunk size when the region is formatted here (the largest hot segment)")
	f.StringSliceVar(&memnodeAddrs, "memnode-addrs", nil, "with --embedded: use these aquifer memnode processes (host:port,...) instead of in-process ones")
	f.StringVar(&secretFile, "secret-file", "", "with --embedded: the pod secret file (default DATA-DIR/pod.secret)")
	f.IntVar(&workers, "workers", 2, "fault-serving threads per VM")
	f.BoolVar(&earlyResume, "early-resume", false, "report VMs ready once zero runs are set up and stream the hot set in while they run (default: after the whole hot set is installed)")
	register(cmd)
}
