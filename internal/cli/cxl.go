package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/aquifer-pool/aquifer/cxl"
	"github.com/aquifer-pool/aquifer/cxl/devdax"
	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/cxl/shm"
	"github.com/spf13/cobra"
)

func init() {
	cmd := &cobra.Command{
		Use:   "cxl",
		Short: "Inspect and format the pod-shared CXL tier (devdax device or emulated /dev/shm region)",
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
		Use:   "format --cxl shm:PATH|devdax:DEV [--create --cxl-size N]",
		Short: "Write a fresh pod layout (destroys the pool; no host may be attached)",
		Long: `format writes a fresh pod layout into a CXL region: the superblock, the host
slot table and the chunk descriptors. --cxl names the region the way
aquifer serve --cxl does: shm:PATH is an emulated region (a shared memory
file; --create makes it, --cxl-size long), devdax:/dev/daxX.Y a real device.
An existing pod is kept unless --force is given. aquifer pool init does the
same for the emulated region of one pod and also creates its data directory.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runCXLFormat(cmd, &ff) },
	}
	ff.register(format)

	var region cxlRegion
	info := &cobra.Command{
		Use:   "info --cxl shm:PATH|devdax:DEV",
		Short: "Print a pod's layout, identity, registered hosts and descriptor states, and check it (read-only)",
		Long: `info prints what a CXL region holds: the layout, the identity record (which
pod of which control plane claimed it), the registered host slots and the
descriptor states, then checks what every host relies on (superblock,
identity, descriptor CRCs). It only reads, and exits non-zero when the check
fails: a daemon takes such a region out of service (restores read the RDMA
copies) until it is formatted again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runCXLInfo(cmd, &region) },
	}
	region.register(info)
	cmd.AddCommand(prims, format, info)
	register(cmd)
}

// cxlRegion is the region a cxl subcommand works on: --cxl shm:PATH or
// devdax:DEV (the old --file and --dax still work, deprecated).
type cxlRegion struct{ spec, dax, file string }

func (r *cxlRegion) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&r.spec, "cxl", "", "the CXL region: shm:PATH (emulated, e.g. shm:/dev/shm/aquifer-pod0-cxl) or devdax:/dev/daxX.Y")
	cmd.Flags().StringVar(&r.dax, "dax", "", "device-DAX path (same as --cxl devdax:DEV)")
	cmd.Flags().StringVar(&r.file, "file", "", "emulated region file (same as --cxl shm:PATH)")
	cmd.Flags().MarkDeprecated("dax", "use --cxl devdax:DEV (the name serve uses)")
	cmd.Flags().MarkDeprecated("file", "use --cxl shm:PATH (the name serve uses)")
}

// resolve turns the flags into one kind and path.
func (r *cxlRegion) resolve() (kind, path string, err error) {
	n := 0
	for _, s := range []string{r.spec, r.dax, r.file} {
		if s != "" {
			n++
		}
	}
	switch {
	case n > 1:
		return "", "", errors.New("give the region once: --cxl shm:PATH or --cxl devdax:DEV")
	case r.dax != "":
		return "devdax", r.dax, nil
	case r.file != "":
		return "shm", r.file, nil
	case r.spec == "":
		return "", "", errors.New("no region given: add --cxl shm:/dev/shm/NAME (emulated) or --cxl devdax:/dev/daxX.Y")
	}
	kind, path, ok := strings.Cut(r.spec, ":")
	if !ok || path == "" || (kind != "shm" && kind != "devdax") {
		return "", "", fmt.Errorf("--cxl %q: want shm:PATH (emulated region) or devdax:/dev/daxX.Y (a CXL device)", r.spec)
	}
	return kind, path, nil
}

// open maps the whole region, writable or read-only.
func (r *cxlRegion) open(writable bool) (cxl.Region, error) {
	kind, path, err := r.resolve()
	if err != nil {
		return nil, err
	}
	if kind == "devdax" {
		var w []cxl.Window
		if writable {
			sz, _, err := devdax.Info(path)
			if err != nil {
				return nil, err
			}
			w = []cxl.Window{{Off: 0, Len: sz}}
		}
		return devdax.Open(path, w)
	}
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("CXL region %s does not exist (aquifer cxl format --create --cxl-size SIZE makes one)", path)
		}
		return nil, err
	}
	var w []cxl.Window
	if writable {
		w = shm.All(st.Size())
	}
	return shm.Open(path, w, nil)
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
	fl.StringVar(&f.size, "cxl-size", "", "size of a new emulated region (with --create), e.g. 1GiB")
	fl.StringVar(&f.chunk, "cxl-chunk", "64MiB", "chunk size (a multiple of 4KiB): the largest hot segment one snapshot may place in CXL")
	fl.IntVar(&f.hosts, "host-slots", pod.DefaultHostSlots, "host slots: the most hosts that may share the region")
	fl.BoolVar(&f.create, "create", false, "create the emulated region first (fails if it exists)")
	fl.BoolVar(&f.force, "force", false, "overwrite an existing pod (empties the CXL tier)")
	fl.StringVar(&f.size, "size", "", "same as --cxl-size")
	fl.StringVar(&f.chunk, "chunk", "64MiB", "same as --cxl-chunk")
	fl.IntVar(&f.hosts, "hosts", pod.DefaultHostSlots, "same as --host-slots")
	fl.MarkDeprecated("size", "use --cxl-size (the name serve and pool init use)")
	fl.MarkDeprecated("chunk", "use --cxl-chunk (the name serve and pool init use)")
	fl.MarkDeprecated("hosts", "use --host-slots")
	f.region.register(cmd)
}

// runCXLFormat is aquifer cxl format: create the region file if asked,
// refuse to overwrite a pod without --force, write a fresh layout.
func runCXLFormat(cmd *cobra.Command, f *cxlFormatFlags) error {
	kind, path, err := f.region.resolve()
	if err != nil {
		return err
	}
	c, err := parseSize(f.chunk)
	if err != nil || c == 0 {
		return fmt.Errorf("--cxl-chunk %q: give a size such as 2MiB or 64MiB", f.chunk)
	}
	if f.create {
		if kind != "shm" {
			return errors.New("--create makes an emulated region: use it with --cxl shm:PATH")
		}
		n, err := parseSize(f.size)
		if err != nil || n == 0 {
			return fmt.Errorf("--cxl-size %q: give a size such as 256MiB or 1GiB", f.size)
		}
		if err := shm.Create(path, int64(n)); err != nil {
			return err
		}
	} else if f.size != "" {
		return errors.New("--cxl-size sizes a new region: add --create (an existing region keeps its size)")
	}
	r, err := f.region.open(true)
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := pod.ReadGeometry(r); err == nil && !f.force {
		return fmt.Errorf("%s:%s already holds a pod; add --force to destroy it", kind, path)
	}
	g, err := pod.Format(r, pod.FormatOptions{ChunkSize: int64(c), HostSlots: f.hosts})
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "formatted %s:%s: %d bytes, %d chunks of %d bytes, %d host slots of %d bytes, data at %d\n",
		kind, path, g.Size, g.Chunks, g.ChunkSize, g.HostSlots, g.SlotSize, g.DataOff)
	return nil
}

// runCXLInfo is aquifer cxl info: print the layout, the identity, the
// descriptor states and the host slots of the pod on region, then check
// it; read-only.
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
	switch id, ok, err := pod.ReadIdentity(r); {
	case err != nil:
		fmt.Fprintf(out, "identity: unreadable: %v\n", err)
	case !ok:
		fmt.Fprintln(out, "identity: none (formatted without a pod name; the first daemon to join claims it)")
	default:
		fmt.Fprintf(out, "identity: %s\n", id)
	}
	fmt.Fprintf(out, "descriptors: free %d, writing %d, published %d (%d bytes), retired %d, torn %d\n",
		rep.States[pod.StateFree], rep.States[pod.StateWriting], rep.States[pod.StatePublished], rep.Bytes,
		rep.States[pod.StateRetired], rep.Torn)
	for _, s := range rep.Slots {
		fmt.Fprintf(out, "host %d: lease %d heartbeat %d read-seq %d\n", s.Host, s.Lease, s.Heartbeat, s.ReadSeq)
	}
	if err := pod.Check(r, true); err != nil {
		fmt.Fprintf(out, "check: FAILED: %v\n", err)
		return fmt.Errorf("the region fails its check (%w): daemons take it out of service; format it again with aquifer cxl format --force or aquifer pool init --force", err)
	}
	fmt.Fprintln(out, "check: ok")
	return nil
}
