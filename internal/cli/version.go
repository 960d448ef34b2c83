package cli

import (
	"fmt"

	"github.com/aquifer-pool/aquifer/internal/buildinfo"
	"github.com/spf13/cobra"
)

func init() {
	register(&cobra.Command{
		Use:   "version",
		Short: "Print the aquifer version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintln(cmd.OutOrStdout(), buildinfo.String())
		},
	})
}
