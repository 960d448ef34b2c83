package bench

import (
	"slices"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
	"golang.org/x/sys/unix"
)

// Calibration is one run of the fixed calibration loops: the machine's own
// speed at that moment, measured in the same run as the strategies.
type Calibration struct {
	Concurrency int           `json:"concurrency"`
	Round       int           `json:"round"`
	Workload    string        `json:"workload"`
	CPU         time.Duration `json:"cpu_loop_ns"`
	// FreshPage is the mean cost of first-touching a fresh anonymous page
	// (the cost every restore pays per page; it differs several-fold
	// between machines of one kind).
	FreshPage time.Duration `json:"fresh_page_ns"`
	// CopyFloor and CopyPerPage are the UFFDIO_COPY floor (floor.go)
	// measured at the same moment, in bytes/s: batched copies, and one
	// 4 KiB page per ioctl. 0 where no userfaultfd could be made.
	CopyFloor   float64 `json:"uffdio_copy_floor_bytes_per_s,omitempty"`
	CopyPerPage float64 `json:"uffdio_copy_per_page_bytes_per_s,omitempty"`
}

const (
	calibIters = 4 << 20 // xorshift steps of the CPU loop
	calibPages = 512     // fresh pages of the page loop
)

var calibSink uint64

// calibrate runs both loops once.
func calibrate() (cpu, page time.Duration) {
	t0 := time.Now()
	x := uint64(88172645463325252)
	for i := 0; i < calibIters; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	calibSink += x
	cpu = time.Since(t0)
	m, err := offheap.Anon(calibPages*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		return cpu, 0
	}
	defer m.Unmap()
	t0 = time.Now()
	for p := 0; p < calibPages; p++ {
		m.B[p*4096] = 1
	}
	page = time.Since(t0) / calibPages
	return cpu, page
}

// Noise summarises the calibration loops over a run.
type Noise struct {
	Runs int `json:"runs"`
	// CPUP50 and the spread (P95/P5 - 1) of the CPU loop.
	CPUP50    time.Duration `json:"cpu_loop_p50_ns"`
	CPUSpread float64       `json:"cpu_loop_spread"`
	// FreshPageP50 and its spread.
	FreshPageP50    time.Duration `json:"fresh_page_p50_ns"`
	FreshPageSpread float64       `json:"fresh_page_spread"`
	// CopyFloorP50 and CopyPerPageP50 are the UFFDIO_COPY floor's p50
	// (bytes/s), CopyFloorSpread its spread.
	CopyFloorP50    float64 `json:"uffdio_copy_floor_bytes_per_s,omitempty"`
	CopyFloorSpread float64 `json:"uffdio_copy_floor_spread,omitempty"`
	CopyPerPageP50  float64 `json:"uffdio_copy_per_page_bytes_per_s,omitempty"`
}

func summarise(c []Calibration) *Noise {
	if len(c) == 0 {
		return nil
	}
	var cpu, pg, floor, perPage []int64
	for _, x := range c {
		cpu = append(cpu, int64(x.CPU))
		pg = append(pg, int64(x.FreshPage))
		if x.CopyFloor > 0 {
			floor = append(floor, int64(x.CopyFloor))
			perPage = append(perPage, int64(x.CopyPerPage))
		}
	}
	spread := func(v []int64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		lo, hi := pct(s, 5), pct(s, 95)
		if lo <= 0 {
			return 0
		}
		return float64(hi)/float64(lo) - 1
	}
	n := &Noise{Runs: len(c), CPUP50: time.Duration(pct(cpu, 50)), CPUSpread: spread(cpu),
		FreshPageP50: time.Duration(pct(pg, 50)), FreshPageSpread: spread(pg)}
	if len(floor) > 0 {
		n.CopyFloorP50, n.CopyFloorSpread, n.CopyPerPageP50 = float64(pct(floor, 50)), spread(floor), float64(pct(perPage, 50))
	}
	return n
}
