package cli

import (
	"fmt"
	"os"

	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/spf13/cobra"
)

func init() {
	var mem string
	cmd := &cobra.Command{
		Use:   "verify IMG --mem MEM",
		Short: "Check every digest of an Aquifer image and compare its reconstruction with the memory file byte for byte",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var bar *progressBar
			if st, err := os.Stat(mem); err == nil {
				bar = newProgressBar(st.Size(), "verify")
			}
			res, err := snapimage.Verify(args[0], mem, bar.setTotal)
			bar.finish()
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: OK: %d bytes identical to %s (%d pages: %d zero, %d hot, %d cold)\n",
				args[0], res.Bytes, mem, res.Pages, res.ZeroPages, res.HotPages, res.ColdPages)
			return nil
		},
	}
	cmd.Flags().StringVar(&mem, "mem", "", "original guest memory file (required)")
	cmd.MarkFlagRequired("mem")
	register(cmd)
}
