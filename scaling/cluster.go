package scaling

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Cluster is a deployment: hosts in pods (one CXL device per pod) and
// memory nodes, at a cluster-wide restore rate.
type Cluster struct {
	Hosts       int     `json:"hosts"`
	Pods        int     `json:"pods"`
	MemoryNodes int     `json:"memory_nodes"`
	Rate        float64 `json:"rate_per_s"` // restores per second, cluster-wide
	// Snapshots is the number of distinct snapshots published; each pod
	// keeps PodShare of them hot in its CXL device (1: every pod, every
	// snapshot).
	Snapshots int     `json:"snapshots"`
	PodShare  float64 `json:"pod_share"`
	Host      Host    `json:"host"`
	// Memory nodes: NIC bandwidth (bytes/s), read operations per second,
	// DRAM bytes each; Replicas copies of every cold page.
	NodeBandwidth float64 `json:"node_bandwidth"`
	NodeIOPS      float64 `json:"node_iops"`
	NodeCapacity  float64 `json:"node_capacity_bytes"`
	Replicas      int     `json:"replicas"`
	// CXL device per pod: bandwidth (bytes/s) and capacity (bytes).
	PodCXLBandwidth float64 `json:"pod_cxl_bandwidth"`
	PodCXLCapacity  float64 `json:"pod_cxl_capacity_bytes"`
	// Control plane (etcd): reads and writes per second it sustains, and
	// what a restore issues (catalog reads on the restore path, one write
	// recording the restore after it).
	ControlReads     float64       `json:"control_reads_per_s"`
	ControlWrites    float64       `json:"control_writes_per_s"`
	ReadsPerRestore  float64       `json:"reads_per_restore"`
	WritesPerRestore float64       `json:"writes_per_restore"`
	ControlRead      time.Duration `json:"control_read_ns"` // one unloaded linearizable read
	// Target is the utilisation a resource may run at (sizing answers
	// keep every resource at or below it).
	Target float64 `json:"target_utilisation"`
}

// DefaultCluster is the reference deployment with published or
// stated parameters (docs/scaling.md lists their sources).
func DefaultCluster() Cluster {
	return Cluster{Hosts: 1000, Pods: 50, MemoryNodes: 16, Rate: 10000, Snapshots: 1000, PodShare: 1,
		Host: ServerHost(64), NodeBandwidth: 100e9 / 8, NodeIOPS: 20e6, NodeCapacity: 512 << 30, Replicas: 2,
		PodCXLBandwidth: 64e9, PodCXLCapacity: 1 << 40, ControlReads: 100e3, ControlWrites: 40e3,
		ReadsPerRestore: 2, WritesPerRestore: 1, ControlRead: 90 * time.Microsecond, Target: 0.7}
}

// Validate checks a cluster description.
func (c Cluster) Validate() error {
	if c.Hosts <= 0 || c.Pods <= 0 || c.Pods > c.Hosts || c.MemoryNodes < 0 || c.Rate < 0 {
		return fmt.Errorf("need hosts >= pods > 0, memory nodes >= 0 and a rate >= 0 (got %d hosts, %d pods, %d memory nodes, %g/s)",
			c.Hosts, c.Pods, c.MemoryNodes, c.Rate)
	}
	if c.Replicas <= 0 || c.NodeBandwidth <= 0 || c.NodeIOPS <= 0 || c.NodeCapacity <= 0 || c.PodCXLBandwidth <= 0 ||
		c.PodCXLCapacity <= 0 || c.ControlReads <= 0 || c.ControlWrites <= 0 || c.Host.Cores <= 0 {
		return fmt.Errorf("every capacity of the cluster must be positive")
	}
	if c.Target <= 0 || c.Target >= 1 {
		return fmt.Errorf("target utilisation %g must be in (0, 1)", c.Target)
	}
	return nil
}

// Load is one resource's utilisation.
type Load struct {
	Resource    string  `json:"resource"`
	Utilisation float64 `json:"utilisation"`
	// MaxRate is the cluster restore rate at which it reaches the target
	// (0: not bound by the rate, e.g. a capacity).
	MaxRate float64 `json:"max_rate_per_s"`
	Detail  string  `json:"detail"`
}

// ClusterResult is a cluster's outcome at its rate.
type ClusterResult struct {
	Cluster    Cluster       `json:"cluster"`
	Workload   string        `json:"workload"`
	Loads      []Load        `json:"loads"`
	Bottleneck string        `json:"bottleneck"`
	MaxRate    float64       `json:"max_rate_per_s"` // every resource at or below the target
	Feasible   bool          `json:"feasible"`
	HostP50    time.Duration `json:"host_p50_ns"`
	HostP99    time.Duration `json:"host_p99_ns"`
	// P50 adds the queueing at memory nodes and control plane on the
	// restore's critical path to the host's p50; Saturated says a queue
	// on that path grows without bound (P50 is then meaningless).
	P50       time.Duration `json:"p50_ns"`
	Saturated bool          `json:"saturated"`
}

// readsOf counts the memory-node reads of a restore: the demand reads, or
// the cold bytes in 64 KiB extents if that is more (prefetch).
func readsOf(w Workload) float64 {
	return math.Max(float64(w.ColdReads), float64(w.ColdBytes)/(64<<10))
}

// cpuPerRestore is the host CPU a restore needs.
func cpuPerRestore(w Workload) time.Duration { return w.Setup + w.Preinstall + w.GuestCPU + w.PagerCPU }

// PlanCluster evaluates the cluster at its rate for workload w.
func PlanCluster(c Cluster, w Workload) (ClusterResult, error) {
	if err := c.Validate(); err != nil {
		return ClusterResult{}, err
	}
	out := ClusterResult{Cluster: c, Workload: w.Name}
	add := func(name string, util, maxRate float64, detail string) {
		if math.IsInf(maxRate, 0) || math.IsNaN(maxRate) {
			maxRate = 0
		}
		if math.IsInf(util, 1) {
			util = math.MaxFloat64
		}
		out.Loads = append(out.Loads, Load{Resource: name, Utilisation: util, MaxRate: maxRate, Detail: detail})
	}
	perHost := c.Rate / float64(c.Hosts)
	cpu := cpuPerRestore(w).Seconds()
	add("host CPU", perHost*cpu/float64(c.Host.Cores), c.Target*float64(c.Host.Cores)/cpu*float64(c.Hosts),
		fmt.Sprintf("%.1f ms CPU per restore on %d cores, %.1f restores/s per host", cpu*1e3, c.Host.Cores, perHost))
	if c.Host.CXLBandwidth > 0 && w.HotBytes > 0 {
		add("host CXL link", perHost*float64(w.HotBytes)/c.Host.CXLBandwidth, c.Target*c.Host.CXLBandwidth/float64(w.HotBytes)*float64(c.Hosts),
			fmt.Sprintf("%.1f MiB hot set per restore over %.0f GB/s", float64(w.HotBytes)/(1<<20), c.Host.CXLBandwidth/1e9))
	}
	if c.Host.NICBandwidth > 0 && w.ColdBytes > 0 {
		add("host NIC", perHost*float64(w.ColdBytes)/c.Host.NICBandwidth, c.Target*c.Host.NICBandwidth/float64(w.ColdBytes)*float64(c.Hosts),
			fmt.Sprintf("%.2f MiB cold per restore over %.0f Gb/s", float64(w.ColdBytes)/(1<<20), c.Host.NICBandwidth*8/1e9))
	}
	perPod := c.Rate / float64(c.Pods)
	if w.HotBytes > 0 {
		add("pod CXL bandwidth", perPod*float64(w.HotBytes)/c.PodCXLBandwidth, c.Target*c.PodCXLBandwidth/float64(w.HotBytes)*float64(c.Pods),
			fmt.Sprintf("%.0f restores/s per pod of %d hosts, %.0f GB/s device", perPod, c.Hosts/c.Pods, c.PodCXLBandwidth/1e9))
	}
	hot := float64(c.Snapshots) * c.PodShare * float64(w.HotBytes)
	add("pod CXL capacity", hot/c.PodCXLCapacity, math.Inf(1),
		fmt.Sprintf("%d snapshots x %.0f%% x %.1f MiB hot = %.1f GiB of %.0f GiB", c.Snapshots, 100*c.PodShare, float64(w.HotBytes)/(1<<20),
			hot/(1<<30), c.PodCXLCapacity/(1<<30)))
	reads := readsOf(w)
	if c.MemoryNodes > 0 {
		n := float64(c.MemoryNodes)
		add("memory-node bandwidth", c.Rate*float64(w.ColdBytes)/n/c.NodeBandwidth, c.Target*c.NodeBandwidth*n/math.Max(1, float64(w.ColdBytes)),
			fmt.Sprintf("%.2f GB/s per node of %.1f", c.Rate*float64(w.ColdBytes)/n/1e9, c.NodeBandwidth/1e9))
		add("memory-node IOPS", c.Rate*reads/n/c.NodeIOPS, c.Target*c.NodeIOPS*n/math.Max(1, reads),
			fmt.Sprintf("%.0f reads per restore, %.2f M/s per node of %.0f M/s", reads, c.Rate*reads/n/1e6, c.NodeIOPS/1e6))
		stored := float64(c.Snapshots) * float64(w.ColdStored)
		add("memory-node capacity", stored/(n*c.NodeCapacity), math.Inf(1),
			fmt.Sprintf("%d snapshots x %.1f MiB (cold x %d replicas) = %.1f GiB of %.0f GiB", c.Snapshots, float64(w.ColdStored)/(1<<20),
				c.Replicas, stored/(1<<30), n*c.NodeCapacity/(1<<30)))
	} else if w.ColdBytes > 0 {
		add("memory-node bandwidth", math.Inf(1), 0, "no memory nodes for the cold pages")
	}
	cr, cw := c.Rate*c.ReadsPerRestore/c.ControlReads, c.Rate*c.WritesPerRestore/c.ControlWrites
	maxCP := c.Target / (c.ReadsPerRestore/c.ControlReads + c.WritesPerRestore/c.ControlWrites)
	add("control plane", cr+cw, maxCP, fmt.Sprintf("%.0f reads/s + %.0f writes/s", c.Rate*c.ReadsPerRestore, c.Rate*c.WritesPerRestore))
	sort.SliceStable(out.Loads, func(i, j int) bool { return out.Loads[i].Utilisation > out.Loads[j].Utilisation })
	out.Bottleneck = out.Loads[0].Resource
	out.MaxRate = math.Inf(1)
	out.Feasible = true
	for _, l := range out.Loads {
		if l.MaxRate > 0 {
			out.MaxRate = math.Min(out.MaxRate, l.MaxRate)
		}
		if l.Utilisation > c.Target {
			out.Feasible = false
		}
	}
	// Latency: the host under Poisson arrivals, plus queueing.
	if perHost > 0 {
		hr := SimulateHostRate(c.Host, w, perHost, 400, 1)
		out.HostP50, out.HostP99 = hr.P50, hr.P99
		if !hr.Stable {
			out.Feasible = false
		}
	} else {
		hr := SimulateHost(c.Host, w, 1)
		out.HostP50, out.HostP99 = hr.P50, hr.P99
	}
	q := func(rho float64) float64 {
		if rho >= 1 {
			return math.Inf(1)
		}
		return rho / (1 - rho)
	}
	extra := 0.0
	for _, l := range out.Loads {
		switch l.Resource {
		case "memory-node bandwidth":
			// A demand read's service at a node: 64 KiB at its bandwidth.
			extra += float64(w.ColdReads) * (64 << 10) / c.NodeBandwidth * 1e9 * q(l.Utilisation)
		case "control plane":
			extra += c.ReadsPerRestore * float64(c.ControlRead) * q(l.Utilisation)
		}
	}
	out.Saturated = math.IsInf(extra, 1)
	if !out.Saturated {
		out.P50 = out.HostP50 + time.Duration(extra)
	}
	if math.IsInf(out.MaxRate, 1) {
		out.MaxRate = 0
	}
	return out, nil
}

// MinMemoryNodes is the fewest memory nodes that keep their bandwidth,
// IOPS and capacity at or below the target for c.Rate (c.MemoryNodes is
// ignored).
func MinMemoryNodes(c Cluster, w Workload) int {
	bw := c.Rate * float64(w.ColdBytes) / (c.Target * c.NodeBandwidth)
	iops := c.Rate * readsOf(w) / (c.Target * c.NodeIOPS)
	capn := float64(c.Snapshots) * float64(w.ColdStored) / (c.Target * c.NodeCapacity)
	n := int(math.Ceil(math.Max(bw, math.Max(iops, capn))))
	return max(n, c.Replicas)
}
