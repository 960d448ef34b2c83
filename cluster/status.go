package cluster

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/control"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Status is a cluster as its processes, control plane, memory nodes and
// daemons report it now.
type Status struct {
	Dir       string           `json:"dir"`
	Etcd      []EtcdStatus     `json:"etcd"`
	Pods      []PodStatus      `json:"pods"`
	MemNodes  []MemNodeStatus  `json:"memnodes"`
	Snapshots []SnapshotStatus `json:"snapshots"`
	// Errors lists what could not be asked (a control plane that is down,
	// a daemon that does not answer).
	Errors []string `json:"errors,omitempty"`
}

// EtcdStatus is a control-plane member.
type EtcdStatus struct {
	Name   string `json:"name"`
	Client string `json:"client"`
	PID    int    `json:"pid"`
	Alive  bool   `json:"alive"`
}

// PodStatus is a pod.
type PodStatus struct {
	Name  string       `json:"name"`
	CXL   string       `json:"cxl"`
	Hosts []HostStatus `json:"hosts"`
	// ChunkOwners maps each owned chunk of the region to its owner's host
	// name.
	ChunkOwners map[string]string `json:"chunk_owners"`
	// HotSets are the snapshots whose hot set this pod's region holds.
	HotSets []string `json:"hot_sets"`
}

// HostStatus is a pager daemon.
type HostStatus struct {
	Name string `json:"name"`
	API  string `json:"api"`
	PID  int    `json:"pid"`
	// Alive: the process runs and its API answers.
	Alive bool   `json:"alive"`
	Addr  string `json:"addr"`
	// Member: the host holds a live membership (lease) of its pod; Slots
	// are its host slots (the first is its owner identity).
	Member bool  `json:"member"`
	Slots  []int `json:"slots"`
	VMs    int   `json:"vms"`
}

// MemNodeStatus is a memory node.
type MemNodeStatus struct {
	Name          string `json:"name"`
	Addr          string `json:"addr"`
	PID           int    `json:"pid"`
	CapacityBytes uint64 `json:"capacity_bytes"`
	UsedBytes     uint64 `json:"used_bytes"`
	Segments      uint64 `json:"segments"`
	Alive         bool   `json:"alive"`
}

// SnapshotStatus is a published snapshot.
type SnapshotStatus struct {
	Name string `json:"name"`
	// HotTier is "cxl" if some pod's region holds its hot set, else
	// "rdma"; HotIn names those pods.
	HotTier   string   `json:"hot_tier"`
	HotIn     []string `json:"hot_in"`
	HotBytes  uint64   `json:"hot_bytes"`
	ColdBytes uint64   `json:"cold_bytes"`
}

// GetStatus asks every piece of the cluster in dir.
func GetStatus(ctx context.Context, dir string) (*Status, error) {
	s, err := Load(dir)
	if err != nil {
		return nil, err
	}
	st := &Status{Dir: s.Dir}
	for _, e := range s.Etcd {
		st.Etcd = append(st.Etcd, EtcdStatus{Name: e.Name, Client: e.Client, PID: e.PID, Alive: e.Alive()})
	}
	var plane *control.Plane
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	plane, err = s.connect(cctx)
	cancel()
	if err != nil {
		st.Errors = append(st.Errors, err.Error())
	} else {
		defer plane.Close()
		plane.Timeout = 2 * time.Second
	}
	for _, p := range s.Pods {
		st.Pods = append(st.Pods, podStatus(ctx, plane, p, st))
	}
	for _, m := range s.MemNodes {
		ms := MemNodeStatus{Name: m.Name, Addr: m.Addr, PID: m.PID, CapacityBytes: m.Capacity, Alive: m.Alive()}
		if ms.Alive {
			if v, err := scrape(ctx, m.Metrics); err != nil {
				st.Errors = append(st.Errors, fmt.Sprintf("%s metrics: %v", m.Name, err))
			} else {
				ms.CapacityBytes, ms.UsedBytes, ms.Segments = uint64(v["aquifer_memnode_capacity_bytes"]), uint64(v["aquifer_memnode_used_bytes"]), uint64(v["aquifer_memnode_segments"])
			}
		}
		st.MemNodes = append(st.MemNodes, ms)
	}
	if plane != nil {
		if snaps, err := plane.ListSnapshots(ctx); err != nil {
			st.Errors = append(st.Errors, err.Error())
		} else {
			for _, sn := range snaps {
				ss := SnapshotStatus{Name: sn.Name, HotTier: "rdma", HotIn: []string{}, HotBytes: sn.HotBytes, ColdBytes: sn.ColdBytes}
				for _, p := range st.Pods {
					for _, n := range p.HotSets {
						if n == sn.Name {
							ss.HotTier, ss.HotIn = "cxl", append(ss.HotIn, p.Name)
						}
					}
				}
				st.Snapshots = append(st.Snapshots, ss)
			}
		}
	}
	return st, nil
}

func podStatus(ctx context.Context, plane *control.Plane, p *Pod, st *Status) PodStatus {
	ps := PodStatus{Name: p.Name, CXL: p.CXL, ChunkOwners: map[string]string{}, HotSets: []string{}}
	members := map[string]control.MemberInfo{}
	slotHost := map[int]string{}
	if plane != nil {
		if state, err := plane.NewPodState(p.Name, 10); err == nil {
			if ms, err := state.Members(ctx); err != nil {
				st.Errors = append(st.Errors, err.Error())
			} else {
				for _, m := range ms {
					members[m.Name] = m
					for _, sl := range m.Slots {
						slotHost[sl] = m.Name
					}
				}
			}
			if pls, err := state.Placements(ctx); err == nil {
				for name := range pls {
					ps.HotSets = append(ps.HotSets, name)
				}
				sort.Strings(ps.HotSets)
			}
			if owners, err := state.ChunkOwners(ctx); err == nil {
				for chunk, slot := range owners {
					name := slotHost[slot]
					if name == "" {
						name = fmt.Sprintf("slot %d", slot)
					}
					ps.ChunkOwners[strconv.Itoa(chunk)] = name
				}
			}
		}
	}
	for _, h := range p.Hosts {
		hs := HostStatus{Name: h.Name, API: h.API, PID: h.PID, Addr: h.Addr, Slots: []int{}}
		if h.Alive() {
			cl := client.New(h.API, client.Options{Timeout: 2 * time.Second})
			if vms, err := cl.VMs(ctx); err == nil {
				hs.Alive, hs.VMs = true, len(vms)
			} else {
				st.Errors = append(st.Errors, fmt.Sprintf("%s/%s: %v", p.Name, h.Name, err))
			}
		}
		if m, ok := members[h.Name]; ok {
			hs.Member, hs.Slots = true, m.Slots
		}
		ps.Hosts = append(ps.Hosts, hs)
	}
	return ps
}

// scrape reads a Prometheus endpoint's gauges by name.
func scrape(ctx context.Context, addr string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			if g := m.GetGauge(); g != nil {
				out[name] += g.GetValue()
			}
		}
	}
	return out, nil
}

// WriteText prints the status for people.
func (st *Status) WriteText(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "cluster %s\n", st.Dir)
	for _, e := range st.Etcd {
		fmt.Fprintf(tw, "control plane\t%s\t%s\tpid %d\t%s\n", e.Name, e.Client, e.PID, alive(e.Alive))
	}
	for _, p := range st.Pods {
		owners := map[string]int{}
		for _, h := range p.ChunkOwners {
			owners[h]++
		}
		fmt.Fprintf(tw, "pod %s\tregion %s\t%d chunks owned\thot sets: %s\n", p.Name, p.CXL, len(p.ChunkOwners), strings.Join(p.HotSets, ", "))
		for _, h := range p.Hosts {
			fmt.Fprintf(tw, "  %s\t%s\t%s\tpid %d\t%s\tslots %v\tchunks %d\tvms %d\n", h.Name, h.Addr, h.API, h.PID, alive(h.Alive), h.Slots, owners[h.Name], h.VMs)
		}
	}
	for _, m := range st.MemNodes {
		fmt.Fprintf(tw, "memory node\t%s\t%s\tpid %d\t%s\tused %d of %d bytes\t%d segments\n", m.Name, m.Addr, m.PID, alive(m.Alive), m.UsedBytes, m.CapacityBytes, m.Segments)
	}
	names := make([]string, 0, len(st.Snapshots))
	for _, s := range st.Snapshots {
		where := "rdma"
		if len(s.HotIn) > 0 {
			where = "cxl in " + strings.Join(s.HotIn, ", ")
		}
		names = append(names, fmt.Sprintf("%s (hot set: %s)", s.Name, where))
	}
	sort.Strings(names)
	fmt.Fprintf(tw, "snapshots\t%d\t%s\n", len(names), strings.Join(names, ", "))
	for _, e := range st.Errors {
		fmt.Fprintf(tw, "! %s\n", e)
	}
	tw.Flush()
}

func alive(b bool) string {
	if b {
		return "alive"
	}
	return "DOWN"
}
