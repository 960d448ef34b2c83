package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/aquifer-pool/aquifer/demo"
	"github.com/spf13/cobra"
)

func init() {
	var o demo.Options
	var size string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the one-command demo on an embedded default snapshot",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if o.MemSize, err = parseSize(size); err != nil {
				return err
			}
			o.Out = cmd.OutOrStdout()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return demo.Run(ctx, o)
		},
	}
	cmd.Flags().StringVar(&o.Dir, "dir", "", "working directory (default: a temporary one, removed afterwards)")
	cmd.Flags().StringVar(&size, "mem", "256MiB", "size of the synthetic snapshot")
	cmd.Flags().IntVar(&o.Runs, "runs", 3, "runs per strategy (interleaved)")
	register(cmd)
}
