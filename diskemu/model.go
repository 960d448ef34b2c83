package diskemu

import (
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Model is a block device's read performance.
type Model struct {
	// Name is the short name used in reports ("nvme", "network").
	Name string `json:"name"`
	// Latency is the unloaded service time of one small read (4 KiB, QD1),
	// excluding the transfer of its bytes.
	Latency time.Duration `json:"latency_ns"`
	// Bandwidth is the device's (or volume's) read throughput, bytes/s.
	Bandwidth float64 `json:"bandwidth_bytes_per_s"`
	// IOPS caps request admissions per second (0: no cap).
	IOPS float64 `json:"iops,omitempty"`
	// ReadAheadKB is the kernel's readahead on this device (read_ahead_kb).
	ReadAheadKB int `json:"read_ahead_kb"`
	// MaxRequestKB is the largest request the device takes (max_sectors_kb).
	MaxRequestKB int `json:"max_request_kb"`
	// Source says where the figures come from.
	Source string `json:"source"`
}

// NVMe is a data-center TLC NVMe SSD (PCIe Gen3/4 x4).
func NVMe() Model {
	return Model{Name: "nvme", Latency: 80 * time.Microsecond, Bandwidth: 3.5e9, IOPS: 800e3, ReadAheadKB: 128, MaxRequestKB: 128,
		Source: "Micron 9200 NVMe datasheet: QD1 4 KiB read latency 92-150 us typical, 3.5 GB/s sequential 128 KiB read, 840K random 4 KiB read IOPS; " +
			"AnandTech enterprise SSD roundup (2018): Intel P4510 / Samsung 983 DCT QD1 4 KiB random read ~80 us; Linux default read_ahead_kb 128"}
}

// Network is EBS-class network block storage (a gp3 volume provisioned at
// its maximum).
func Network() Model {
	return Model{Name: "network", Latency: 700 * time.Microsecond, Bandwidth: 1000 * (1 << 20), IOPS: 16000, ReadAheadKB: 128, MaxRequestKB: 128,
		Source: "AWS EBS user guide: io2 Block Express < 500 us average for 16 KiB I/O, General Purpose (gp2/gp3) volumes slower ('single-digit millisecond'); " +
			"gp3 maximum 16,000 IOPS and 1,000 MiB/s; EBS volumes appear as NVMe devices with Linux's default read_ahead_kb 128"}
}

// Models are the named device models.
func Models() map[string]Model { return map[string]Model{"nvme": NVMe(), "network": Network()} }

// Wire is the transfer time of n bytes.
func (m Model) Wire(n int) time.Duration {
	if m.Bandwidth <= 0 {
		return 0
	}
	return time.Duration(float64(n) / m.Bandwidth * 1e9)
}

// Validate checks the model's parameters.
func (m Model) Validate() error {
	if m.Latency < 0 || m.Bandwidth < 0 || m.IOPS < 0 {
		return fmt.Errorf("model %q has a negative parameter", m.Name)
	}
	if m.ReadAheadKB < 0 || m.ReadAheadKB%4 != 0 || m.MaxRequestKB < 4 || m.MaxRequestKB%4 != 0 {
		return fmt.Errorf("model %q: read_ahead_kb %d / max_request_kb %d must be multiples of 4 (max_request_kb >= 4)",
			m.Name, m.ReadAheadKB, m.MaxRequestKB)
	}
	return nil
}

// queue computes completion times: admission paced by IOPS, readiness
// Latency after admission (latencies overlap), then the transfer on one
// shared channel. Completion times never decrease in arrival order.
type queue struct {
	m      Model
	inject time.Duration // Latency (0 while measuring the FUSE overhead)
	// The FUSE round trip's own cost, fixed + per byte: subtracted from
	// every request's wait so the application sees the modelled time.
	ovFixed   time.Duration
	ovPerByte float64 // ns per byte
	nextAdmit time.Time
	chanFree  time.Time
}

// schedule returns when a request of n bytes arriving at now completes.
func (q *queue) schedule(now time.Time, n int) time.Time {
	admit := now
	if q.nextAdmit.After(admit) {
		admit = q.nextAdmit
	}
	if q.m.IOPS > 0 {
		q.nextAdmit = admit.Add(time.Duration(1e9 / q.m.IOPS))
	}
	ready := admit.Add(q.inject)
	if q.chanFree.After(ready) {
		ready = q.chanFree
	}
	done := ready.Add(q.m.Wire(n))
	q.chanFree = done
	return done
}

// device delays requests by their modelled service times.
type device struct {
	model Model
	mu    sync.Mutex
	q     queue
	stats Stats
}

// Stats count the requests a device served.
type Stats struct {
	Requests uint64        `json:"requests"`
	Bytes    uint64        `json:"bytes"`
	Waited   time.Duration `json:"waited_ns"` // sum of modelled waits
}

func newDevice(m Model) *device { return &device{model: m, q: queue{m: m, inject: m.Latency}} }

// Sleeping overshoots by ~70-120 us here (and handing a completion to a
// parked thread costs as much): a request sleeps only while its deadline
// is further than this and spins, yielding, for the rest.
const sleepMargin = 300 * time.Microsecond

// wait blocks the calling request for its modelled service time.
func (d *device) wait(n int) {
	now := time.Now()
	d.mu.Lock()
	at := d.q.schedule(now, n).Add(-d.q.ovFixed - time.Duration(d.q.ovPerByte*float64(n)))
	d.stats.Requests++
	d.stats.Bytes += uint64(n)
	d.stats.Waited += at.Sub(now)
	d.mu.Unlock()
	if left := time.Until(at); left > sleepMargin+50*time.Microsecond {
		ts := unix.NsecToTimespec(int64(left - sleepMargin))
		unix.Nanosleep(&ts, nil)
	}
	for time.Now().Before(at) {
		runtime.Gosched()
	}
}

// setOverhead turns the model on with the measured FUSE overhead, or off
// (raw FUSE, to measure that overhead) with on false.
func (d *device) setOverhead(on bool, fixed time.Duration, perByte float64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.q.m = d.model
	if !on {
		d.q.inject, d.q.ovFixed, d.q.ovPerByte = 0, 0, 0
		d.q.m.Bandwidth, d.q.m.IOPS = 0, 0
		return
	}
	d.q.inject, d.q.ovFixed, d.q.ovPerByte = d.q.m.Latency, fixed, perByte
}

func (d *device) snapshot() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

func (d *device) close() {}
