package bench

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

// The UFFDIO_COPY floor: how fast this machine, at this moment, can install
// pages into a fresh userfaultfd-registered mapping from resident memory.
// A pre-install can go no faster (it is the same ioctl from the tier's
// mapping), so its throughput is reported as a fraction of this one,
// measured in the same run as the calibration loops are.
const (
	floorBytes = 16 << 20 // per measurement: a fresh mapping of this size
	floorBatch = 1 << 20  // bytes per UFFDIO_COPY of the batched floor
)

// CopyFloor is one measurement of the UFFDIO_COPY floor.
type CopyFloor struct {
	// Batched is bytes/s with floorBatch-byte copies (the floor a
	// pre-install of long runs can reach); PerPage with one 4 KiB page
	// per ioctl (the cost of a hot set installed page by page).
	Batched float64
	PerPage float64
}

// measureCopyFloor copies floorBytes into a fresh registered mapping twice
// (batched, then page by page into another fresh mapping), from a resident
// source, on the calling thread.
func measureCopyFloor() (CopyFloor, error) {
	src, err := offheap.Anon(floorBytes, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		return CopyFloor{}, err
	}
	defer src.Unmap()
	for i := 0; i < floorBytes; i += 4096 {
		src.B[i] = byte(i>>12) | 1 // resident, non-zero
	}
	var out CopyFloor
	if out.Batched, err = copyInto(src, floorBatch); err != nil {
		return CopyFloor{}, err
	}
	if out.PerPage, err = copyInto(src, 4096); err != nil {
		return CopyFloor{}, err
	}
	return out, nil
}

// copyInto installs src into a fresh MISSING-registered private anonymous
// mapping (the guest memory Firecracker maps) in batch-byte copies and
// returns the throughput. It checks the installed bytes afterwards.
func copyInto(src *offheap.Mapping, batch int) (float64, error) {
	n := src.Len()
	dst, err := offheap.Anon(n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		return 0, err
	}
	defer dst.Unmap()
	u, err := uffd.New()
	if err != nil {
		return 0, err
	}
	defer u.Close()
	if _, err := u.API(0); err != nil {
		return 0, err
	}
	if _, err := u.Register(dst.Addr(), uintptr(n), uffd.RegisterModeMissing); err != nil {
		return 0, err
	}
	t0 := time.Now()
	for off := 0; off < n; off += batch {
		if _, err := u.Copy(dst.Addr()+uintptr(off), src.Addr()+uintptr(off), uintptr(batch), true); err != nil {
			return 0, err
		}
	}
	el := time.Since(t0)
	for i := 0; i < n; i += 4096 {
		if dst.B[i] != src.B[i] {
			return 0, fmt.Errorf("UFFDIO_COPY floor: byte %d reads %d, copied %d", i, dst.B[i], src.B[i])
		}
	}
	return float64(n) / el.Seconds(), nil
}

// preinstallRate is a sample's pre-install throughput in bytes/s: what the
// pager installed ahead of faults over its whole pre-install (tier window,
// verification, copies and zero-run set-up). 0 without a pre-install.
func (s Sample) preinstallRate() float64 {
	b := s.Breakdown
	if b == nil || b.Pager == nil || b.Pager.Preinstall <= 0 || b.Pager.PreinstallBytes == 0 {
		return 0
	}
	return float64(b.Pager.PreinstallBytes) / b.Pager.Preinstall.Seconds()
}

// attachFloor puts the run's UFFDIO_COPY floor (p50 of its calibration
// measurements, per concurrency level) next to the pre-install: every
// result's PreinstallOfFloor, and for the report the p50 pre-install
// throughput of the aquifer strategy's samples at the lowest concurrency
// level as a fraction of that level's floor.
func (r *Report) attachFloor(samples []Sample) {
	if r.Noise != nil {
		r.CopyFloor, r.CopyPerPage = r.Noise.CopyFloorP50, r.Noise.CopyPerPageP50
	}
	floorAt := func(c int) float64 {
		if n := r.NoiseByConcurrency[strconv.Itoa(c)]; n != nil && n.CopyFloorP50 > 0 {
			return n.CopyFloorP50
		}
		return r.CopyFloor
	}
	for i := range r.Results {
		x := &r.Results[i]
		if f := floorAt(x.Concurrency); f > 0 && x.PreinstallRateP50 > 0 {
			x.PreinstallOfFloor = x.PreinstallRateP50 / f
		}
	}
	rates := map[int][]float64{}
	lowest := math.MaxInt
	for _, s := range samples {
		if s.Strategy != Aquifer {
			continue
		}
		if v := s.preinstallRate(); v > 0 {
			rates[s.Concurrency] = append(rates[s.Concurrency], v)
			lowest = min(lowest, s.Concurrency)
		}
	}
	r.PreinstallFloorByC = nil
	for c, v := range rates {
		f := floorAt(c)
		if f <= 0 {
			continue
		}
		if r.PreinstallFloorByC == nil {
			r.PreinstallFloorByC = map[string]float64{}
		}
		r.PreinstallFloorByC[strconv.Itoa(c)] = median(v) / f
		if c == lowest {
			r.PreinstallRate, r.PreinstallOfFloor = median(v), median(v)/f
		}
	}
}

// floorLine says in one line what attachFloor found.
func (r *Report) floorLine() string {
	if r.CopyFloor <= 0 {
		return ""
	}
	s := fmt.Sprintf("UFFDIO_COPY floor (fresh registered mapping, %d MiB from resident memory, this run, p50): %.2f GB/s in %d KiB copies, %.2f GB/s page by page",
		floorBytes>>20, r.CopyFloor/1e9, floorBatch>>10, r.CopyPerPage/1e9)
	if r.PreinstallRate > 0 {
		s += fmt.Sprintf("; aquifer's pre-install (p50 over its restores, tier window and verification included) %.2f GB/s = %.0f%% of the floor",
			r.PreinstallRate/1e9, 100*r.PreinstallOfFloor)
	}
	return s
}
