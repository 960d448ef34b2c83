package cli

import (
	"fmt"

	"github.com/aquifer-pool/aquifer/embed"
	"github.com/spf13/cobra"
)

func init() {
	var pc embed.PodConfig
	var cxlSize, cxlPath, chunk string
	var force bool
	cmd := &cobra.Command{
		Use:   "init --data-dir DIR",
		Short: "Prepare a pod: data directory, pod secret and formatted emulated CXL region",
		Long: `init prepares what aquifer serve --embedded runs on: the data directory
(mode 0700), the pod's shared admission secret DIR/pod.secret (mode 0600,
base64 text; kept if it already exists: give the same file to every aquifer
memnode with --secret-file) and the emulated CXL region, formatted with
--cxl-chunk chunks. An existing region is never formatted again unless
--force: that empties the CXL tier (restores of snapshots published before
fall back to their RDMA copies).

Pass serve the same --data-dir and --cxl.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := parseSize(cxlSize)
			if err != nil {
				return fmt.Errorf("--cxl-size: %w", err)
			}
			cs, err := parseSize(chunk)
			if err != nil {
				return fmt.Errorf("--cxl-chunk: %w", err)
			}
			if cxlPath != "" {
				if pc.CXL != "" {
					return fmt.Errorf("--cxl-path and --cxl both name the region: give --cxl shm:%s", cxlPath)
				}
				pc.CXL = "shm:" + absPath(cxlPath)
			}
			pc.CXLSize, pc.CXLChunk = int64(size), int64(cs)
			res, err := embed.Init(pc, force)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "data directory %s\n", res.Dir)
			if res.SecretCreated {
				fmt.Fprintf(w, "pod secret %s (created, mode 0600)\n", res.SecretFile)
			} else {
				fmt.Fprintf(w, "pod secret %s (existing, kept)\n", res.SecretFile)
			}
			g := res.Geometry
			fmt.Fprintf(w, "CXL region %s: %d bytes formatted, %d chunks of %d bytes, %d host slots (emulated: a shared memory file)\n",
				res.CXLPath, g.Size, g.Chunks, g.ChunkSize, g.HostSlots)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&pc.DataDir, "data-dir", "/var/lib/aquifer", "data directory (etcd, memory nodes, pod secret)")
	f.StringVar(&pc.Name, "pod", "pod0", "pod name (its default region path)")
	f.StringVar(&pc.CXL, "cxl", "", "the emulated CXL region, shm:PATH (default shm:/dev/shm/aquifer-POD-cxl)")
	f.StringVar(&cxlPath, "cxl-path", "", "emulated CXL region file (same as --cxl shm:PATH)")
	f.StringVar(&cxlSize, "cxl-size", "1GiB", "size of the emulated CXL region")
	f.StringVar(&chunk, "cxl-chunk", "64MiB", "CXL chunk size: the largest hot segment one snapshot may place in CXL")
	f.StringVar(&chunk, "chunk-size", "64MiB", "same as --cxl-chunk")
	f.MarkDeprecated("chunk-size", "use --cxl-chunk (the name serve uses)")
	f.StringVar(&pc.SecretFile, "secret-file", "", "the pod secret file (default DATA-DIR/pod.secret)")
	f.BoolVar(&force, "force", false, "format an existing CXL region again (empties the CXL tier)")
	// The pool command is made in pool.go, whose init runs first (files
	// are initialised in name order).
	for _, c := range rootCmd.Commands() {
		if c.Name() == "pool" {
			c.AddCommand(cmd)
			return
		}
	}
	panic("cli: no pool command to add init to")
}
