package bench

import (
	"os"
	"sort"
)

// SnapshotMemory is what keeping one snapshot restorable costs, per
// strategy: host DRAM held between restores, pod CXL memory and
// memory-node memory. Per restored VM, the guest's own memory is in the
// samples (Sample.Resident) and the report's memory table.
type SnapshotMemory struct {
	Workload string `json:"workload"`
	Strategy string `json:"strategy"`
	// HostDRAM is host DRAM the snapshot occupies between restores (files
	// in tmpfs / page cache kept resident; 0 for cold storage, whose page
	// cache is transient and evictable).
	HostDRAM uint64 `json:"host_dram_bytes"`
	// Storage is bytes on the storage device (disk-based strategies).
	Storage uint64 `json:"storage_bytes,omitempty"`
	// CXL is pod CXL memory (shared by every host of the pod).
	CXL uint64 `json:"cxl_bytes,omitempty"`
	// MemoryNodes is memory-node DRAM (cold segment times replicas).
	MemoryNodes uint64 `json:"memory_node_bytes,omitempty"`
	// PerVMHandler is memory a restore's handler holds per VM besides the
	// guest's own (REAP's working-set buffer, read per restore).
	PerVMHandler uint64 `json:"per_vm_handler_bytes,omitempty"`
}

// Tiered is implemented by pods with tiers: how many memory-node copies
// of a cold page they keep.
type Tiered interface{ Replicas() int }

func fileSize(p string) uint64 {
	if st, err := os.Stat(p); err == nil {
		return uint64(st.Size())
	}
	return 0
}

// dramOf maps a file of any storage to its DRAM copy.
func dramOf(p *prepared, path string) string {
	d := p.on[StorageDRAM]
	for _, f := range p.on {
		switch path {
		case f.mem:
			return d.mem
		case f.reapWS:
			return d.reapWS
		case f.loadingSet:
			return d.loadingSet
		}
	}
	return path
}

func snapshotMemory(o Options, preps []*prepared) []SnapshotMemory {
	replicas := 0
	if t, ok := o.Pod.(Tiered); ok {
		replicas = t.Replicas()
	}
	var out []SnapshotMemory
	for _, p := range preps {
		for _, s := range o.Strategies {
			if diskBased(s) {
				for _, st := range o.Storages {
					f := p.on[st]
					used := []string{f.mem}
					if s == REAP {
						used = append(used, f.reapWS)
					}
					if s == FaaSnap {
						used = append(used, f.loadingSet)
					}
					m := SnapshotMemory{Workload: p.w.Name, Strategy: Sample{Strategy: s, Storage: st}.Label()}
					for _, u := range used {
						// The DRAM copy is sparse (zero pages are holes):
						// its allocation is what the file needs anywhere.
						if st == StorageDRAM {
							m.HostDRAM += p.atRest[u]
						} else {
							m.Storage += p.atRest[dramOf(p, u)]
						}
					}
					if s == REAP {
						// Its DRAM copy: a model's mount is gone by now.
						m.PerVMHandler = fileSize(dramOf(p, f.reapWS))
					}
					out = append(out, m)
				}
				continue
			}
			if s == Warm || s == NoRestore {
				continue // a warm VM's memory is in the samples
			}
			m := SnapshotMemory{Workload: p.w.Name, Strategy: s}
			if c, ok := p.counts[s]; ok && o.Pod != nil {
				if replicas > 0 {
					m.CXL, m.MemoryNodes = c[0]*4096, c[1]*4096*uint64(replicas)
				} else {
					m.Storage = (c[0] + c[1]) * 4096 // local image files, no tiers
				}
			}
			out = append(out, m)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Workload < out[j].Workload })
	return out
}
