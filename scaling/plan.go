package scaling

import (
	"fmt"
	"io"
	"math"
	"text/tabwriter"
	"time"
)

// Plan is the answer to an operator's sizing question.
type Plan struct {
	Calibration *Calibration   `json:"calibration"`
	Validation  []Check        `json:"validation"`
	Workload    Workload       `json:"workload"`
	Host        Host           `json:"host"`
	HostRuns    []HostResult   `json:"host_runs"`
	Cluster     *ClusterResult `json:"cluster,omitempty"`
	NodesNeeded int            `json:"memory_nodes_needed"`
	Notes       []string       `json:"notes"`
	Elapsed     time.Duration  `json:"-"`
}

// PlanOptions is an operator's question.
type PlanOptions struct {
	Workload    string
	Host        Host
	Concurrency []int
	Cluster     *Cluster // nil: host only; MemoryNodes 0: size them
}

// MakePlan answers the question from a calibration.
func MakePlan(cal *Calibration, o PlanOptions) (*Plan, error) {
	w, err := cal.Find(o.Workload)
	if err != nil {
		return nil, err
	}
	if o.Host.Cores <= 0 {
		return nil, fmt.Errorf("the host needs at least one core")
	}
	p := &Plan{Calibration: cal, Validation: cal.Validate(), Workload: w, Host: o.Host}
	for _, c := range o.Concurrency {
		if c <= 0 {
			return nil, fmt.Errorf("concurrency %d is not positive", c)
		}
		p.HostRuns = append(p.HostRuns, SimulateHost(o.Host, w, c))
	}
	measured := map[int]bool{}
	for _, x := range p.Validation {
		measured[x.Concurrency] = true
	}
	p.Notes = append(p.Notes, fmt.Sprintf("validated on the calibration machine (%d cores) at concurrency %v; "+
		"other core counts, link limits and concurrency levels are extrapolations with this machine's per-operation costs", cal.Cores, keys(measured)))
	if o.Cluster != nil {
		c := *o.Cluster
		c.Host = o.Host
		if c.MemoryNodes == 0 {
			c.MemoryNodes = MinMemoryNodes(c, w)
			p.Notes = append(p.Notes, fmt.Sprintf("memory nodes sized: the fewest keeping bandwidth, IOPS and capacity at or below %.0f%%", 100*c.Target))
		}
		p.NodesNeeded = MinMemoryNodes(c, w)
		r, err := PlanCluster(c, w)
		if err != nil {
			return nil, err
		}
		p.Cluster = &r
		p.Notes = append(p.Notes, "the cluster model is a flow model (utilisation and M/M/1 queueing per resource) on top of the host simulation: nothing at cluster scale was measured")
	}
	return p, nil
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func msf(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/1e6) }

// Write prints the plan.
func (p *Plan) Write(w io.Writer) {
	cal := p.Calibration
	fmt.Fprintf(w, "calibration: %s on %s (%d cores), strategy %s, %d workloads; other work on the machine while it ran: %.1f runnable threads (from its calibration loops; not applied to the fit)\n",
		cal.Source, cal.Machine, cal.Cores, cal.Strategy, len(cal.Workloads), cal.Background)
	fmt.Fprintln(w, "\nvalidation on the calibration machine: the model (fitted at concurrency 1) against measured p50s")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tconc\tmeasured ms\t95% CI\tmodel ms\terror\tin CI\t")
	for _, c := range p.Validation {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s-%s\t%s\t%+.0f%%\t%v\t\n", c.Workload, c.Concurrency, msf(c.Measured), msf(c.MeasuredCI[0]),
			msf(c.MeasuredCI[1]), msf(c.Model), 100*c.Error, c.Inside)
	}
	tw.Flush()
	wl := p.Workload
	fmt.Fprintf(w, "\nworkload %s: %.1f ms CPU per restore (%.1f pre-install of %d pages, %.1f guest, %.1f pager), %.1f ms waits, %.2f MiB cold, %.1f MiB hot\n",
		wl.Name, float64(cpuPerRestore(wl))/1e6, float64(wl.Preinstall)/1e6, wl.HotPages, float64(wl.GuestCPU)/1e6, float64(wl.PagerCPU)/1e6,
		float64(wl.Waits)/1e6, float64(wl.ColdBytes)/(1<<20), float64(wl.HotBytes)/(1<<20))
	h := p.Host
	fmt.Fprintf(w, "\nhost: %d cores, CXL link %s, NIC %s, %s concurrent pre-installs; c restores started together\n", h.Cores,
		bw(h.CXLBandwidth), bw(h.NICBandwidth), slots(h.PreinstallSlots))
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "conc\tp50 ms\tp99 ms\tCPU\tCXL link\tNIC\tslot wait ms\tbottleneck\t")
	for _, r := range p.HostRuns {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%.0f%%\t%.0f%%\t%.0f%%\t%s\t%s\t\n", r.Concurrency, msf(r.P50), msf(r.P99), 100*r.CPU, 100*r.CXL, 100*r.NIC,
			msf(r.SlotWait), r.Bottleneck)
	}
	tw.Flush()
	if c := p.Cluster; c != nil {
		cl := c.Cluster
		fmt.Fprintf(w, "\ncluster: %d hosts in %d pods, %d memory nodes (fewest that fit: %d), %.0f restores/s, %d snapshots\n",
			cl.Hosts, cl.Pods, cl.MemoryNodes, p.NodesNeeded, cl.Rate, cl.Snapshots)
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "resource\tutilisation\tmax restores/s at target\tdetail\t")
		for _, l := range c.Loads {
			mr := "-"
			if l.MaxRate > 0 {
				mr = fmt.Sprintf("%.0f", l.MaxRate)
			}
			u := fmt.Sprintf("%.1f%%", 100*l.Utilisation)
			if l.Utilisation == math.MaxFloat64 {
				u = "unbounded"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", l.Resource, u, mr, l.Detail)
		}
		tw.Flush()
		verdict := "fits"
		if !c.Feasible {
			verdict = "does NOT fit"
		}
		p50 := msf(c.P50) + " ms"
		if c.Saturated {
			p50 = "unbounded (a queue on the restore path is saturated)"
		}
		fmt.Fprintf(w, "bottleneck: %s; the plan %s (target utilisation %.0f%%); max rate %.0f restores/s; restore p50 %s (host %s ms, p99 %s ms)\n",
			c.Bottleneck, verdict, 100*cl.Target, c.MaxRate, p50, msf(c.HostP50), msf(c.HostP99))
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func bw(b float64) string {
	if b <= 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%.1f GB/s", b/1e9)
}

func slots(n int) string {
	if n <= 0 {
		return "unbounded"
	}
	return fmt.Sprint(n)
}
