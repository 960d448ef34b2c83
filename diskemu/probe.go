package diskemu

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Probe is what reads through the mount really took.
type Probe struct {
	Size  int           `json:"size_bytes"`
	Reads int           `json:"reads"`
	P25   time.Duration `json:"p25_ns"`
	P50   time.Duration `json:"p50_ns"`
	P90   time.Duration `json:"p90_ns"`
	// Claimed is what the model says such a read takes (Latency + Wire).
	Claimed time.Duration `json:"claimed_ns"`
}

func (p Probe) String() string {
	return fmt.Sprintf("%d KiB QD1 read: p50 %v, p90 %v (model %v)", p.Size>>10, p.P50.Round(time.Microsecond),
		p.P90.Round(time.Microsecond), p.Claimed.Round(time.Microsecond))
}

// Probe reads n random, uncached, size-aligned blocks of size bytes of the
// file at path (under the mount) one at a time with readahead off
// (FADV_RANDOM), checks each against the backing file byte for byte and
// reports the latency distribution.
func (mt *Mount) Probe(path string, size, n int, seed uint64) (Probe, error) {
	f, err := os.Open(path)
	if err != nil {
		return Probe{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Probe{}, err
	}
	blocks := st.Size() / int64(size)
	if blocks < int64(n) {
		return Probe{}, fmt.Errorf("%s has %d blocks of %d bytes, probe wants %d", path, blocks, size, n)
	}
	bp, err := mt.backingOf(path)
	if err != nil {
		return Probe{}, err
	}
	ref, err := os.Open(bp)
	if err != nil {
		return Probe{}, err
	}
	defer ref.Close()
	fd := int(f.Fd())
	unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_RANDOM); err != nil {
		return Probe{}, fmt.Errorf("FADV_RANDOM on %s: %w", path, err)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	perm := rng.Perm(int(blocks))[:n]
	buf, want := make([]byte, size), make([]byte, size)
	lat := make([]time.Duration, 0, n)
	for _, b := range perm {
		off := int64(b) * int64(size)
		t0 := time.Now()
		k, err := f.ReadAt(buf, off)
		d := time.Since(t0)
		if err != nil && k < size {
			return Probe{}, fmt.Errorf("probe read at %d: %w", off, err)
		}
		if _, err := ref.ReadAt(want, off); err != nil && !bytes.Equal(buf[:k], want[:k]) {
			return Probe{}, err
		}
		if !bytes.Equal(buf, want) {
			return Probe{}, fmt.Errorf("%s: block at %d differs from the backing file", path, off)
		}
		lat = append(lat, d)
	}
	unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
	slices.Sort(lat)
	return Probe{Size: size, Reads: n, P25: lat[len(lat)/4], P50: lat[len(lat)/2], P90: lat[len(lat)*9/10],
		Claimed: mt.Model.Latency + mt.Model.Wire(size)}, nil
}

func (mt *Mount) backingOf(path string) (string, error) {
	rel, err := relUnder(mt.Dir, path)
	if err != nil {
		return "", err
	}
	return mt.backing + "/" + rel, nil
}

// Calibrate measures the FUSE round trip with the model off on the file at
// path (under the mount) for 4 KiB and MaxRequestKB reads, subtracts that
// overhead (fixed + per byte) from every later request, and returns the
// probes of both sizes with the model on: what an application now sees.
func (mt *Mount) Calibrate(path string, n int) ([]Probe, error) {
	big := mt.Model.MaxRequestKB << 10
	mt.dev.setOverhead(false, 0, 0)
	small, err := mt.Probe(path, 4096, n, 1)
	if err != nil {
		return nil, err
	}
	large, err := mt.Probe(path, big, n, 2)
	if err != nil {
		return nil, err
	}
	// The lower quartile: noise from other work only ever adds time, and
	// subtracting it would make the model faster than it claims.
	perByte := 0.0
	if big > 4096 && large.P25 > small.P25 {
		perByte = float64(large.P25-small.P25) / float64(big-4096)
	}
	fixed := small.P25 - time.Duration(perByte*4096)
	// Closed loop: correct the subtracted overhead by what the probes
	// still miss (the p50 of both sizes), a few times.
	var out []Probe
	for it := 0; it < 4; it++ {
		mt.dev.setOverhead(true, fixed, perByte)
		out = out[:0]
		for i, sz := range []int{4096, big} {
			p, err := mt.Probe(path, sz, n, uint64(3+2*it+i))
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
		e4, eBig := out[0].P50-out[0].Claimed, out[1].P50-out[1].Claimed
		if abs(e4) < out[0].Claimed/10 && abs(eBig) < out[1].Claimed/10 {
			break
		}
		// Half the error each time: p50s of a few dozen reads are noisy.
		e4, eBig = e4/2, eBig/2
		slope := 0.0
		if big > 4096 {
			slope = float64(eBig-e4) / float64(big-4096)
			perByte = max(0, perByte+slope)
		}
		fixed += e4 - time.Duration(slope*4096)
	}
	mt.Overhead = fixed + time.Duration(perByte*4096)
	mt.OverheadPerKiB = time.Duration(perByte * 1024)
	return out, nil
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
