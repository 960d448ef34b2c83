package diskemu

import (
	"context"
	"encoding/json"
	"io"

	"github.com/aquifer-pool/aquifer/internal/prio"
)

// Ready is what Serve reports once the model is mounted and calibrated.
type Ready struct {
	Mount              string  `json:"mount"`
	Model              Model   `json:"model"`
	ReadAheadKB        int     `json:"read_ahead_kb"`
	FUSEOverhead       int64   `json:"fuse_overhead_ns"`
	FUSEOverheadPerKiB int64   `json:"fuse_overhead_per_kib_ns"`
	Probes             []Probe `json:"probes"`
	Stats              *Stats  `json:"stats,omitempty"` // on exit
	Error              string  `json:"error,omitempty"`
}

// Serve mounts model m over backing at dir, calibrates it on probe (a
// file in backing), writes one Ready line of JSON to out, serves until ctx
// ends, then unmounts and writes a final line with the request counts.
// It is the body of a separate process (aquifer bench storage-model), so
// that its threads can run at a priority the VMs under test do not get.
func Serve(ctx context.Context, dir, backing, probe string, m Model, nice int, out io.Writer) error {
	enc := json.NewEncoder(out)
	fail := func(err error) error {
		enc.Encode(Ready{Error: err.Error()})
		return err
	}
	if nice != 0 {
		if err := prio.Raise(nice); err != nil {
			return fail(err)
		}
	}
	mt, err := NewMount(dir, backing, m)
	if err != nil {
		return fail(err)
	}
	defer mt.Close()
	if nice != 0 {
		prio.Raise(nice) // threads the mount started
	}
	p, err := mt.Path(probe)
	if err != nil {
		return fail(err)
	}
	probes, err := mt.Calibrate(p, 64)
	if err != nil {
		return fail(err)
	}
	ra, _ := mt.ReadAheadKB()
	r := Ready{Mount: dir, Model: m, ReadAheadKB: ra, FUSEOverhead: int64(mt.Overhead), FUSEOverheadPerKiB: int64(mt.OverheadPerKiB), Probes: probes}
	if err := enc.Encode(r); err != nil {
		return err
	}
	<-ctx.Done()
	st := mt.Stats()
	r.Stats = &st
	r.Probes = nil
	err = mt.Close()
	enc.Encode(r)
	return err
}
