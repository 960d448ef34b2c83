package wset

import "fmt"

// Coarsen returns the trace in pages of ps bytes (a multiple of the trace's
// page size, 4 KiB to 2 MiB in practice): every access keeps its time,
// instruction count, kind and vCPU and names the larger page holding its
// page, so the first touch of a 2 MiB page is the first touch of any of its
// 4 KiB pages. t itself is not changed.
func (t *Trace) Coarsen(ps uint32) (*Trace, error) {
	if t.PageSize == 0 || ps < t.PageSize || ps%t.PageSize != 0 {
		return nil, fmt.Errorf("cannot coarsen %d-byte pages to %d-byte pages (want a multiple)", t.PageSize, ps)
	}
	out := &Trace{PageSize: ps, MemSize: t.MemSize, Memory: t.Memory, Source: t.Source, Accesses: make([]Access, len(t.Accesses))}
	if ps != t.PageSize {
		out.Source = fmt.Sprintf("%s (coarsened to %d-byte pages)", t.Source, ps)
	}
	f := uint64(ps / t.PageSize)
	for i, a := range t.Accesses {
		a.Page /= f
		out.Accesses[i] = a
	}
	return out, nil
}
