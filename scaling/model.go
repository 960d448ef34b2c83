package scaling

import (
	"fmt"
	"math"
	"time"
)

// Workload is one function's restore, measured at concurrency 1 on the
// calibration machine (aquifer strategy, p50 of every quantity).
type Workload struct {
	Name string `json:"name"`
	// Startup is CPU a VM process spends before its restore starts (exec,
	// runtime start): in a batch it competes with the other VMs' restores
	// but is not timed.
	Startup time.Duration `json:"startup_ns"`
	// Setup is the guest-side restore (mappings, userfaultfd, handshake).
	Setup time.Duration `json:"setup_ns"`
	// HotPages are pre-installed from CXL; Preinstall is the pager's time
	// for them at concurrency 1 (CPU-bound: copies and digest checks).
	HotPages   uint64        `json:"hot_pages"`
	Preinstall time.Duration `json:"preinstall_ns"`
	// PreinstallWait is the part of the measured pre-install that was not
	// the pager's CPU (the daemon used less CPU than the pre-install took).
	PreinstallWait time.Duration `json:"preinstall_wait_ns"`
	// GuestCPU is the replay's vCPU work without faults (the no-restore
	// floor's summed vCPU time); VCPUs run it.
	GuestCPU time.Duration `json:"guest_cpu_ns"`
	// VCPUs is how many threads run it at once (GuestCPU over the
	// busiest vCPU's share: 1 when one vCPU does all the work).
	VCPUs float64 `json:"vcpus"`
	// PagerCPU is the pager's CPU besides the pre-install.
	PagerCPU time.Duration `json:"pager_cpu_ns"`
	// ColdBytes and ColdReads come from the memory nodes.
	ColdBytes uint64 `json:"cold_bytes"`
	ColdReads uint64 `json:"cold_reads"`
	// Waits is the critical path's waiting (fault round trips): fitted by
	// Calibrate so the model reproduces E2E at concurrency 1.
	Waits time.Duration `json:"waits_ns"`
	// E2E is the measured end-to-end p50 at concurrency 1; Measured the
	// p50 at other concurrency levels (for Validate), with 95% intervals.
	E2E      time.Duration         `json:"e2e_ns"`
	Measured map[int]time.Duration `json:"measured_ns,omitempty"`
	// MeasuredCI are the measured p50s' 95% intervals.
	MeasuredCI map[int][2]time.Duration `json:"measured_ci95_ns,omitempty"`
	// HotBytes / ColdStored are the snapshot's CXL and memory-node bytes.
	HotBytes   uint64 `json:"hot_bytes"`
	ColdStored uint64 `json:"cold_stored_bytes"`
}

// Host is one server.
type Host struct {
	Cores int `json:"cores"`
	// CXLBandwidth is the host's CXL link, bytes/s (0: unlimited).
	CXLBandwidth float64 `json:"cxl_bandwidth"`
	// NICBandwidth is the host's RDMA NIC, bytes/s (0: unlimited).
	NICBandwidth float64 `json:"nic_bandwidth"`
	// PreinstallSlots bounds concurrent pre-installs (0: unbounded).
	PreinstallSlots int `json:"preinstall_slots"`
	// Background is other work's runnable threads, always competing for
	// the cores (the calibration machine is shared; 0 on a planned host).
	Background float64 `json:"background_threads"`
}

// CalibrationHost is the machine the numbers were measured on, with
// background other threads competing for its cores.
func CalibrationHost(cores int, background float64) Host {
	// The emulated CXL copies at DRAM speed and the emulated RDMA runs
	// in-process: no link limits here; 4 reader identities.
	return Host{Cores: cores, PreinstallSlots: 4, Background: background}
}

// ServerHost is a 2-socket-class server of the given cores with a x8 PCIe
// 5.0 CXL link (~25 GB/s read, cxl/shm.DefaultModel) and a 100 Gb/s NIC.
func ServerHost(cores int) Host {
	return Host{Cores: cores, CXLBandwidth: 25e9, NICBandwidth: 100e9 / 8, PreinstallSlots: 4}
}

// segments the replay is cut into (CPU bursts alternating with waits).
const segments = 16

// Validate reports the workload's problems.
func (w Workload) Validate() error {
	if w.VCPUs <= 0 || w.E2E <= 0 {
		return fmt.Errorf("workload %q: no vCPUs or no measured end-to-end time", w.Name)
	}
	return nil
}

func dur(x float64) time.Duration { return time.Duration(math.Round(x)) }
