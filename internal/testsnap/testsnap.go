// Package testsnap builds synthetic snapshot memory files and access traces
// with known content for tests and the quick demo: mostly zero pages, some
// random pages, some pages duplicated from a small pool (as page-cache and
// library pages are in real guests), written sparsely so a 256 MiB file
// costs only its non-zero pages.
//
// It is a fixture generator, not the calibrated synthetic corpus (package
// corpus owns that). It must not import serving packages.
package testsnap

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/aquifer-pool/aquifer/wset"
)

// Spec describes a synthetic snapshot.
type Spec struct {
	Size     uint64  // bytes, a multiple of 4096
	ZeroFrac float64 // fraction of zero pages (default 0.8)
	DupFrac  float64 // fraction of pages copied from a pool of 64 (default 0.05)
	Seed     uint64
}

// Kinds of page in a generated file.
const (
	Zero byte = iota
	Random
	Dup
)

// Write creates path with the spec's content and returns the kind of every
// page.
func Write(path string, s Spec) ([]byte, error) {
	const ps = 4096
	if s.Size == 0 || s.Size%ps != 0 {
		return nil, fmt.Errorf("testsnap: size %d is not a multiple of 4096", s.Size)
	}
	if s.ZeroFrac == 0 {
		s.ZeroFrac = 0.8
	}
	if s.DupFrac == 0 {
		s.DupFrac = 0.05
	}
	r := rand.New(rand.NewPCG(s.Seed, s.Seed^0xA9F1))
	pool := make([][]byte, 64)
	for i := range pool {
		pool[i] = make([]byte, ps)
		fill(r, pool[i])
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.Truncate(int64(s.Size)); err != nil {
		return nil, err
	}
	pages := s.Size / ps
	kinds := make([]byte, pages)
	buf := make([]byte, ps)
	for p := uint64(0); p < pages; p++ {
		x := r.Float64()
		switch {
		case x < s.ZeroFrac:
			kinds[p] = Zero
			continue
		case x < s.ZeroFrac+s.DupFrac:
			kinds[p] = Dup
			copy(buf, pool[r.IntN(len(pool))])
		default:
			kinds[p] = Random
			fill(r, buf)
			binary.LittleEndian.PutUint64(buf, p+1) // never all-zero
		}
		if _, err := f.WriteAt(buf, int64(p*ps)); err != nil {
			return nil, err
		}
	}
	return kinds, f.Close()
}

func fill(r *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
}

// TraceSpec describes a synthetic invocation.
type TraceSpec struct {
	MemSize   uint64
	Accesses  int           // number of accesses
	Pages     int           // distinct pages touched
	WriteFrac float64       // fraction of writes
	CPUs      int           // vCPUs accesses are spread over
	Think     time.Duration // mean think time between accesses
	Avoid     [2]uint64     // a file-offset range no access may touch before the midpoint (balloon)
	Seed      uint64
}

// Trace builds an access trace: a working set of Pages pages (clustered in
// runs, as code and heap are) touched Accesses times.
func Trace(s TraceSpec) *wset.Trace {
	const ps = 4096
	r := rand.New(rand.NewPCG(s.Seed, 7))
	total := s.MemSize / ps
	set := make([]uint64, 0, s.Pages)
	seen := map[uint64]bool{}
	for len(set) < s.Pages && uint64(len(seen)) < total {
		start := r.Uint64N(total)
		run := 1 + r.IntN(16)
		for k := 0; k < run && len(set) < s.Pages; k++ {
			p := (start + uint64(k)) % total
			if seen[p] {
				continue
			}
			seen[p] = true
			set = append(set, p)
		}
	}
	if s.CPUs <= 0 {
		s.CPUs = 1
	}
	t := &wset.Trace{PageSize: ps, MemSize: s.MemSize, Source: "testsnap"}
	var now time.Duration
	for i := 0; i < s.Accesses; i++ {
		p := set[r.IntN(len(set))]
		if i < len(set) {
			p = set[i] // every page of the set at least once
		}
		off := p * ps
		if i < s.Accesses/2 && off >= s.Avoid[0] && off < s.Avoid[1] {
			continue
		}
		k := wset.Read
		if r.Float64() < s.WriteFrac {
			k = wset.Write
		}
		if s.Think > 0 {
			now += time.Duration(r.Int64N(int64(2 * s.Think)))
		}
		t.Accesses = append(t.Accesses, wset.Access{Page: p, T: now, Kind: k, CPU: uint8(i % s.CPUs)})
	}
	return t
}
