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
	var api, sockDir, images, dataDir, transport, cxlSize, cxlPath string
	var workers, memnodes int
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
the same API. With --images DIR, snapshots are Aquifer images DIR/NAME.img on
local disk (no tiers).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var p pagerd.Pool
			switch {
			case embedded:
				size, err := parseSize(cxlSize)
				if err != nil {
					return err
				}
				e, err := pool.StartEmbedded(ctx, pool.EmbeddedConfig{Dir: dataDir, MemNodes: memnodes,
					CXLSize: int64(size), CXLPath: cxlPath, Transport: transport})
				if err != nil {
					return err
				}
				defer e.Close()
				slog.Info("embedded pod running", "etcd", e.Plane.Endpoints, "memnodes", e.Addrs, "rdma", transport, "data_dir", dataDir)
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
	f.IntVar(&memnodes, "memnodes", 3, "with --embedded: memory nodes")
	f.StringVar(&transport, "rdma", "emu", "with --embedded: how the pager reads memory nodes: emu (latency model, emulated) or tcp (loopback network)")
	f.StringVar(&cxlSize, "cxl-size", "1GiB", "with --embedded: size of the emulated CXL region")
	f.StringVar(&cxlPath, "cxl-path", "", "with --embedded: emulated CXL region file (default /dev/shm/aquifer-pod0-cxl)")
	f.IntVar(&workers, "workers", 2, "fault-serving threads per VM")
	register(cmd)
}
