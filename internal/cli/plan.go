package cli

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"

	"github.com/aquifer-pool/aquifer/bench"
	"github.com/aquifer-pool/aquifer/scaling"
	"github.com/spf13/cobra"
)

func init() {
	var (
		from, strategy, workload, conc, jsonOut, plotOut string
		calCores, cores, slots                           int
		cxlGBs, nicGbps                                  float64
		hostOnly                                         bool
	)
	cl := scaling.DefaultCluster()
	var nodeGbps, podCXLGBs float64 = cl.NodeBandwidth * 8 / 1e9, cl.PodCXLBandwidth / 1e9
	var nodeMem, podCXL string = "512GiB", "1TiB"
	cmd := &cobra.Command{
		Use:   "plan --from BENCH.json",
		Short: "Size hosts and a cluster with the scaling model calibrated from a bench report",
		Long: `plan answers an operator's sizing question with the calibrated scaling model
(package scaling, docs/scaling.md). It reads an aquifer bench report (aquifer and
no-restore at concurrency 1 at least), fits the model to this machine's measured
per-restore costs, shows how well it predicts the report's other concurrency
levels, then simulates one host of --cores at each --concurrency and evaluates a
cluster of --hosts in --pods with --memory-nodes (0: the fewest that fit) at
--rate restores per second.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := bench.ReadReport(from)
			if err != nil {
				return err
			}
			if len(rep.Results) == 0 && len(rep.Samples) > 0 {
				if rep, err = rep.Reaggregate(); err != nil {
					return err
				}
			}
			cal, err := scaling.Calibrate(rep, strategy, calCores)
			if err != nil {
				return err
			}
			h := scaling.ServerHost(cores)
			h.CXLBandwidth, h.NICBandwidth, h.PreinstallSlots = cxlGBs*1e9, nicGbps*1e9/8, slots
			o := scaling.PlanOptions{Workload: workload, Host: h}
			for _, s := range splitList(conc) {
				n, err := strconv.Atoi(s)
				if err != nil || n <= 0 {
					return fmt.Errorf("--concurrency: %q is not a positive integer", s)
				}
				o.Concurrency = append(o.Concurrency, n)
			}
			if !hostOnly {
				c := cl
				c.NodeBandwidth, c.PodCXLBandwidth = nodeGbps*1e9/8, podCXLGBs*1e9
				nm, err := parseSize(nodeMem)
				if err != nil {
					return fmt.Errorf("--node-memory: %w", err)
				}
				pc, err := parseSize(podCXL)
				if err != nil {
					return fmt.Errorf("--pod-cxl-capacity: %w", err)
				}
				c.NodeCapacity, c.PodCXLCapacity = float64(nm), float64(pc)
				o.Cluster = &c
			}
			p, err := scaling.MakePlan(cal, o)
			if err != nil {
				return err
			}
			p.Write(cmd.OutOrStdout())
			if jsonOut != "" {
				b, err := json.MarshalIndent(p, "", "  ")
				if err != nil {
					return err
				}
				if err := bench.WriteFileAtomic(jsonOut, append(b, '\n')); err != nil {
					return err
				}
			}
			if plotOut != "" {
				files, err := scaling.WritePlots(p, plotOut)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "plots: %v\n", files)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "an aquifer bench --json report to calibrate from")
	f.StringVar(&strategy, "strategy", bench.Aquifer, "strategy to model: aquifer or aquifer-early")
	f.IntVar(&calCores, "calibration-cores", runtime.NumCPU(), "cores of the machine the report was measured on")
	f.StringVar(&workload, "workload", "mean", "workload to size for (a name in the report, or mean)")
	f.IntVar(&cores, "cores", 64, "cores per host")
	f.StringVar(&conc, "concurrency", "8,16,32,64", "concurrent restores per host to simulate")
	f.IntVar(&slots, "preinstall-slots", 4, "concurrent pre-installs per host (the daemon's CXL reader identities; 0: unbounded)")
	f.Float64Var(&cxlGBs, "cxl-bandwidth", 25, "host CXL link bandwidth, GB/s")
	f.Float64Var(&nicGbps, "nic-gbps", 100, "host NIC bandwidth, Gb/s")
	f.BoolVar(&hostOnly, "host-only", false, "only the host question (no cluster)")
	f.IntVar(&cl.Hosts, "hosts", cl.Hosts, "hosts in the cluster")
	f.IntVar(&cl.Pods, "pods", cl.Pods, "pods (one CXL device each)")
	f.IntVar(&cl.MemoryNodes, "memory-nodes", 0, "memory nodes (0: the fewest that keep every memory-node resource at or below --target)")
	f.Float64Var(&cl.Rate, "rate", cl.Rate, "cluster-wide restores per second")
	f.IntVar(&cl.Snapshots, "snapshots", cl.Snapshots, "distinct snapshots published")
	f.Float64Var(&cl.PodShare, "pod-share", cl.PodShare, "fraction of the snapshots each pod keeps hot in CXL")
	f.Float64Var(&nodeGbps, "node-gbps", nodeGbps, "memory-node NIC bandwidth, Gb/s")
	f.Float64Var(&cl.NodeIOPS, "node-iops", cl.NodeIOPS, "memory-node reads per second")
	f.StringVar(&nodeMem, "node-memory", nodeMem, "memory-node DRAM for cold pages")
	f.IntVar(&cl.Replicas, "replicas", cl.Replicas, "copies of every cold page")
	f.Float64Var(&podCXLGBs, "pod-cxl-bandwidth", podCXLGBs, "CXL device bandwidth per pod, GB/s")
	f.StringVar(&podCXL, "pod-cxl-capacity", podCXL, "CXL capacity per pod")
	f.Float64Var(&cl.ControlReads, "control-reads", cl.ControlReads, "control-plane linearizable reads per second")
	f.Float64Var(&cl.ControlWrites, "control-writes", cl.ControlWrites, "control-plane writes per second")
	f.Float64Var(&cl.Target, "target", cl.Target, "utilisation a resource may run at")
	f.StringVar(&jsonOut, "json", "", "write the plan as JSON here")
	f.StringVar(&plotOut, "plot", "", "write the plots here (NAME-host.png/.svg, NAME-cluster.png/.svg)")
	cmd.MarkFlagRequired("from")
	register(cmd)
}
