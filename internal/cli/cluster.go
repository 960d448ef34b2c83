package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/aquifer-pool/aquifer/cluster"
	"github.com/spf13/cobra"
)

func init() {
	c := &cobra.Command{
		Use:   "cluster",
		Short: "Run a whole local cluster (control plane, memory nodes, pods of hosts) as separate processes",
		Long: `cluster runs the real topology on one machine: a control plane of 1 or 3
etcd members, memory nodes, and one aquifer serve per host of every pod, each
host on its own loopback address, sharing its pod's CXL region (an emulated
region: a /dev/shm file). Every host's API socket is DIR/pod<i>/host<j>/api.sock.`,
	}
	var uc cluster.Config
	var cxlSize, cxlChunk, nodeCap string
	up := &cobra.Command{
		Use:   "up --pods P --hosts-per-pod H --memnodes M --dir DIR",
		Short: "Start a local cluster and return once everything serves",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			for _, s := range []struct {
				flag, v string
				dst     *uint64
			}{{"cxl-size", cxlSize, &uc.CXLSize}, {"cxl-chunk", cxlChunk, &uc.CXLChunk}, {"memnode-capacity", nodeCap, &uc.MemNodeCapacity}} {
				if *s.dst, err = parseSize(s.v); err != nil {
					return fmt.Errorf("--%s: %w", s.flag, err)
				}
			}
			uc.Progress = cmd.ErrOrStderr()
			t0 := time.Now()
			s, err := cluster.Up(cmd.Context(), uc)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "cluster up in %v: %d pod(s) of %d host(s), %d memory node(s), %d etcd member(s) in %s\n",
				time.Since(t0).Round(time.Millisecond), len(s.Pods), uc.HostsPerPod, len(s.MemNodes), len(s.Etcd), s.Dir)
			for _, p := range s.Pods {
				for _, h := range p.Hosts {
					fmt.Fprintf(w, "  %s/%s  %s  (pid %d, address %s)\n", p.Name, h.Name, h.API, h.PID, h.Addr)
				}
			}
			fmt.Fprintf(w, "control plane: %v\n", s.Endpoints())
			fmt.Fprintf(w, "try:  export AQUIFER_API=%s\n", s.Pods[0].Hosts[0].API)
			fmt.Fprintf(w, "      aquifer publish fn.img --name fn; aquifer cluster status --dir %s\n", s.Dir)
			fmt.Fprintf(w, "stop: aquifer cluster down --dir %s\n", s.Dir)
			return nil
		},
	}
	f := up.Flags()
	f.StringVar(&uc.Dir, "dir", "", "directory of the cluster (state, logs, data)")
	f.IntVar(&uc.Pods, "pods", 1, "pods")
	f.IntVar(&uc.HostsPerPod, "hosts-per-pod", 3, "hosts (aquifer serve daemons) per pod")
	f.IntVar(&uc.MemNodes, "memnodes", 3, "memory nodes")
	f.IntVar(&uc.EtcdMembers, "etcd", 1, "control-plane members: 1 or 3")
	f.IntVar(&uc.Replicas, "replicas", 0, "copies of each segment on the memory nodes (default min(2, memnodes))")
	f.IntVar(&uc.LeaseTTL, "lease-ttl", 10, "seconds of silence after which a host (or memory node) is fenced")
	f.DurationVar(&uc.MemNodeDeadAfter, "memnode-dead-after", 0, "a memory node unregistered this long has its segments copied to the others (default the daemon's, 10s)")
	f.IntVar(&uc.Readers, "readers", 0, "CXL reader identities per host (default twice the cores, at least 8)")
	f.StringVar(&cxlSize, "cxl-size", "1GiB", "size of each pod's emulated CXL region")
	f.StringVar(&cxlChunk, "cxl-chunk", "64MiB", "chunk size of the regions (the largest hot segment)")
	f.StringVar(&nodeCap, "memnode-capacity", "2GiB", "capacity of each memory node")
	f.DurationVar(&uc.Timeout, "timeout", 2*time.Minute, "give up (and stop everything) if the cluster is not serving by then")
	up.MarkFlagRequired("dir")

	var dir string
	var asJSON bool
	status := &cobra.Command{
		Use:   "status --dir DIR [--json]",
		Short: "Show a local cluster: pods, hosts, slots, chunk ownership, memory nodes, snapshots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := cluster.GetStatus(cmd.Context(), dir)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			st.WriteText(cmd.OutOrStdout())
			return nil
		},
	}
	status.Flags().StringVar(&dir, "dir", "", "directory of the cluster")
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	status.MarkFlagRequired("dir")

	var grace time.Duration
	down := &cobra.Command{
		Use:   "down --dir DIR",
		Short: "Stop a local cluster (its directory stays)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return cluster.Down(dir, grace, cmd.OutOrStdout())
		},
	}
	down.Flags().StringVar(&dir, "dir", "", "directory of the cluster")
	down.Flags().DurationVar(&grace, "grace", 10*time.Second, "wait this long for each group of processes to exit before SIGKILL")
	down.MarkFlagRequired("dir")
	c.AddCommand(up, status, down)
	register(c)
}
