package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/aquifer-pool/aquifer/pagerd"
	"github.com/spf13/cobra"
)

func init() {
	var api, sockDir, images string
	var workers int
	cmd := &cobra.Command{
		Use:   "serve --api SOCK --socket-dir DIR (--images DIR | pool flags)",
		Short: "Run the per-host pager daemon: restore many VMs from Aquifer images",
		Long: `serve runs the pager daemon. Its control API (HTTP on the Unix socket --api,
mode 0600) prepares restores: PUT /v1/vms/{id} {"snapshot": NAME} returns the
UFFD socket to give Firecracker as mem_backend.backend_path; GET
/v1/vms/{id}/ready returns once the hot set is installed, when the VM may be
resumed. See docs/operations.md.

With --images DIR, snapshots are Aquifer images DIR/NAME.img on local disk.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var pool pagerd.Pool
			switch {
			case images != "":
				pool = &pagerd.DirPool{Dir: images}
			default:
				return fmt.Errorf("give --images DIR (local images)")
			}
			cfg := pagerd.Config{Pool: pool, SocketDir: sockDir, AllowUID: -1}
			cfg.Pager.Workers = workers
			d, err := pagerd.New(cfg)
			if err != nil {
				return err
			}
			defer d.Close()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			slog.Info("pager daemon serving", "api", api, "socket_dir", sockDir)
			return d.Serve(ctx, api)
		},
	}
	cmd.Flags().StringVar(&api, "api", "/run/aquifer/api.sock", "control API socket")
	cmd.Flags().StringVar(&sockDir, "socket-dir", "/run/aquifer/vms", "directory of per-VM UFFD sockets")
	cmd.Flags().StringVar(&images, "images", "", "serve Aquifer images NAME.img from this directory")
	cmd.Flags().IntVar(&workers, "workers", 2, "fault-serving threads per VM")
	register(cmd)
}
