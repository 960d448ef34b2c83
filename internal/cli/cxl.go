package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/aquifer-pool/aquifer/cxl"
	"github.com/aquifer-pool/aquifer/cxl/devdax"
	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/cxl/shm"
	"github.com/spf13/cobra"
)

func init() {
	cmd := &cobra.Command{
		Use:   "cxl",
		Short: "Inspect and format the pod-shared CXL tier (devdax device or emulated /dev/shm pod)",
	}

	prims := &cobra.Command{
		Use:   "prims",
		Short: "Print the cache-maintenance instructions this CPU offers and the ones Aquifer uses",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintln(cmd.OutOrStdout(), cxl.Detect())
		},
	}

	var ff cxlFormatFlags
	format := &cobra.Command{
		Use:   "format (--dax DEV | --file PATH [--create --size N])",
		Short: "Write a fresh pod layout (destroys the pool; no host may be attached)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runCXLFormat(cmd, &ff) },
	}
	ff.register(format)

	var region cxlRegion
	info := &cobra.Command{
		Use:   "info (--dax DEV | --file PATH)",
		Short: "Print a pod's layout, registered hosts and descriptor states (read-only)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runCXLInfo(cmd, &region) },
	}
	region.register(info)
	cmd.AddCommand(prims, format, info)
	register(cmd)
}

// cxlRegion is the region a cxl subcommand works on: a device-DAX device or
// an emulated pod file.
type cxlRegion struct{ dax, file string }

func (r *cxlRegion) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&r.dax, "dax", "", "device-DAX path, e.g. /dev/dax0.0")
	cmd.Flags().StringVar(&r.file, "file", "", "emulated pod file, e.g. /dev/shm/aquifer-pod")
}

// open maps the whole region, writable or read-only.
func (r *cxlRegion) open(writable bool) (cxl.Region, error) {
	switch {
	case r.dax != "" && r.file != "":
		return nil, errors.New("give either --dax or --file, not both")
	case r.dax != "":
		var w []cxl.Window
		if writable {
			sz, _, err := devdax.Info(r.dax)
			if err != nil {
				return nil, err
			}
			w = []cxl.Window{{Off: 0, Len: sz}}
		}
		return devdax.Open(r.dax, w)
	case r.file != "":
		st, err := os.Stat(r.file)
		if err != nil {
			return nil, err
		}
		var w []cxl.Window
		if writable {
			w = shm.All(st.Size())
		}
		return shm.Open(r.file, w, nil)
	}
	return nil, errors.New("give --dax /dev/daxX.Y or --file /dev/shm/NAME")
}

// cxlFormatFlags are the flags of aquifer cxl format.
type cxlFormatFlags struct {
	region        cxlRegion
	size, chunk   string
	hosts         int
	create, force bool
}

func (f *cxlFormatFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.size, "size", "", "size of a new --file pod (with --create), e.g. 256M")
	fl.StringVar(&f.chunk, "chunk", "2M", "chunk size (multiple of 4K)")
	fl.IntVar(&f.hosts, "hosts", pod.DefaultHostSlots, "number of host slots")
	fl.BoolVar(&f.create, "create", false, "create --file first (fails if it exists)")
	fl.BoolVar(&f.force, "force", false, "overwrite an existing pod")
	f.region.register(cmd)
}

// runCXLFormat is aquifer cxl format: create the pod file if asked, refuse
// to overwrite a pod without --force, write a fresh layout.
func runCXLFormat(cmd *cobra.Command, f *cxlFormatFlags) error {
	if f.create {
		if f.region.file == "" {
			return errors.New("--create needs --file")
		}
		n, err := parseSize(f.size)
		if err != nil || n == 0 {
			return fmt.Errorf("--size %q: give a size such as 64M or 1G", f.size)
		}
		if err := shm.Create(f.region.file, int64(n)); err != nil {
			return err
		}
	}
	r, err := f.region.open(true)
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := pod.ReadGeometry(r); err == nil && !f.force {
		return errors.New("region already holds a pod; add --force to destroy it")
	}
	c, err := parseSize(f.chunk)
	if err != nil {
		return fmt.Errorf("--chunk %q: %w", f.chunk, err)
	}
	g, err := pod.Format(r, pod.FormatOptions{ChunkSize: int64(c), HostSlots: f.hosts})
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "formatted %d bytes: %d chunks of %d bytes, %d host slots of %d bytes, data at %d\n",
		g.Size, g.Chunks, g.ChunkSize, g.HostSlots, g.SlotSize, g.DataOff)
	return nil
}

// runCXLInfo is aquifer cxl info: print the layout, the descriptor states
// and the host slots of the pod on region, read-only.
func runCXLInfo(cmd *cobra.Command, region *cxlRegion) error {
	r, err := region.open(false)
	if err != nil {
		return err
	}
	defer r.Close()
	rep, err := pod.Inspect(r)
	if err != nil {
		return err
	}
	g := rep.Geometry
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "pod %d: %d bytes, %d chunks x %d, %d descriptors, %d host slots x %d\n",
		g.PodID, g.Size, g.Chunks, g.ChunkSize, g.Descs(), g.HostSlots, g.SlotSize)
	fmt.Fprintf(out, "descriptors: free %d, writing %d, published %d (%d bytes), retired %d, torn %d\n",
		rep.States[pod.StateFree], rep.States[pod.StateWriting], rep.States[pod.StatePublished], rep.Bytes,
		rep.States[pod.StateRetired], rep.Torn)
	for _, s := range rep.Slots {
		fmt.Fprintf(out, "host %d: lease %d heartbeat %d read-seq %d\n", s.Host, s.Lease, s.Heartbeat, s.ReadSeq)
	}
	return nil
}
