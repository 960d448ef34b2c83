package handshake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
)

// Page sizes Firecracker uses.
const (
	PageSize4K = 4096
	PageSize2M = 2 << 20
)

// Region is one guest memory region as Firecracker describes it: a host
// virtual address range in the VMM and the offset of its content in the
// memory file.
type Region struct {
	BaseHostVirtAddr uint64
	Size             uint64
	Offset           uint64
	PageSize         uint64
}

// End returns the end host address (exclusive).
func (r Region) End() uint64 { return r.BaseHostVirtAddr + r.Size }

// Contains reports whether host address a lies in the region.
func (r Region) Contains(a uint64) bool { return a >= r.BaseHostVirtAddr && a < r.End() }

// FileOffset maps a host address inside the region to the file offset of
// the start of its page.
func (r Region) FileOffset(a uint64) uint64 {
	return r.Offset + (a &^ (r.PageSize - 1)) - r.BaseHostVirtAddr
}

// Dialect is the version family of Firecracker's region JSON.
type Dialect int

const (
	// DialectV1_1 is Firecracker 1.1–1.6: no page size field.
	DialectV1_1 Dialect = iota
	// DialectV1_7 is Firecracker 1.7–1.11: page_size_kib, value in bytes.
	DialectV1_7
	// DialectV1_12 is Firecracker 1.12 and later: page_size (and the
	// deprecated page_size_kib with the same value); the socket stays open.
	DialectV1_12
)

// Dialects lists every dialect, oldest first.
var Dialects = []Dialect{DialectV1_1, DialectV1_7, DialectV1_12}

func (d Dialect) String() string {
	switch d {
	case DialectV1_1:
		return "1.1"
	case DialectV1_7:
		return "1.7"
	case DialectV1_12:
		return "1.12"
	}
	return fmt.Sprintf("dialect(%d)", int(d))
}

// KeepsSocketOpen reports whether Firecracker keeps the connection open after
// the handshake (1.12+, firecracker#5122).
func (d Dialect) KeepsSocketOpen() bool { return d >= DialectV1_12 }

// ParseDialect accepts a Firecracker version ("1.4", "v1.10.1", "1.12") or a
// dialect name.
func ParseDialect(s string) (Dialect, error) {
	var maj, min int
	v := s
	if len(v) > 0 && v[0] == 'v' {
		v = v[1:]
	}
	if _, err := fmt.Sscanf(v, "%d.%d", &maj, &min); err != nil || maj != 1 || min < 1 {
		return 0, fmt.Errorf("unknown Firecracker version %q (want 1.N, N >= 1)", s)
	}
	switch {
	case min <= 6:
		return DialectV1_1, nil
	case min <= 11:
		return DialectV1_7, nil
	default:
		return DialectV1_12, nil
	}
}

type wireRegion struct {
	Base        *uint64 `json:"base_host_virt_addr"`
	Size        *uint64 `json:"size"`
	Offset      *uint64 `json:"offset"`
	PageSizeKiB *uint64 `json:"page_size_kib,omitempty"`
	PageSize    *uint64 `json:"page_size,omitempty"`
}

// Marshal encodes regions the way Firecracker of the given dialect does.
func Marshal(regions []Region, d Dialect) ([]byte, error) {
	out := make([]wireRegion, len(regions))
	for i := range regions {
		r := regions[i]
		w := wireRegion{Base: &r.BaseHostVirtAddr, Size: &r.Size, Offset: &r.Offset}
		ps := r.PageSize
		switch d {
		case DialectV1_1:
		case DialectV1_7:
			w.PageSizeKiB = &ps
		case DialectV1_12:
			w.PageSizeKiB = &ps
			w.PageSize = &ps
		default:
			return nil, fmt.Errorf("unknown dialect %d", int(d))
		}
		out[i] = w
	}
	return json.Marshal(out)
}

// ErrIncomplete means the bytes read so far are a valid prefix of a JSON
// document: read more.
var ErrIncomplete = errors.New("incomplete region JSON")

// Parse decodes the region array of any dialect. defaultPageSize is used when
// the message carries no page size (dialect 1.1–1.6): the host page size.
// It reports ErrIncomplete when data is a truncated but so far valid
// document. Unknown fields are ignored (newer Firecracker may add some).
func Parse(data []byte, defaultPageSize uint64) ([]Region, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, ErrIncomplete
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.UseNumber()
	var raw []json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, ErrIncomplete
		}
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("region list is not valid JSON at byte %d: %v", se.Offset, err)
		}
		return nil, fmt.Errorf("region list must be a JSON array of objects: %v", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data after the region array")
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("region list is empty")
	}
	regions := make([]Region, 0, len(raw))
	for i, m := range raw {
		var w wireRegion
		if err := json.Unmarshal(m, &w); err != nil {
			return nil, fmt.Errorf("region %d: %v", i, err)
		}
		if w.Base == nil || w.Size == nil || w.Offset == nil {
			return nil, fmt.Errorf("region %d: missing base_host_virt_addr, size or offset", i)
		}
		r := Region{BaseHostVirtAddr: *w.Base, Size: *w.Size, Offset: *w.Offset, PageSize: defaultPageSize}
		switch {
		case w.PageSize != nil:
			r.PageSize = *w.PageSize
			if w.PageSizeKiB != nil && *w.PageSizeKiB != *w.PageSize {
				return nil, fmt.Errorf("region %d: page_size %d disagrees with page_size_kib %d",
					i, *w.PageSize, *w.PageSizeKiB)
			}
		case w.PageSizeKiB != nil:
			// Firecracker 1.7–1.11 put bytes in a field named _kib (#4449).
			r.PageSize = *w.PageSizeKiB
		}
		regions = append(regions, r)
	}
	return regions, nil
}

// Validate checks regions against a memory file of memSize bytes: page sizes
// of 4 KiB or 2 MiB (2 MiB: a hugetlbfs-backed guest, Firecracker's
// huge_pages "2M"), one page size for every region, non-empty ranges whose
// host address, size and file offset are aligned to it, no overlap in host
// address space or in the file, no arithmetic overflow, and every region
// inside the file. memSize < 0 skips the file bound.
func Validate(regions []Region, memSize int64) error {
	if len(regions) == 0 {
		return fmt.Errorf("no regions")
	}
	for i, r := range regions {
		if r.PageSize != PageSize4K && r.PageSize != PageSize2M {
			return fmt.Errorf("region %d: page size %d is neither 4096 nor 2097152", i, r.PageSize)
		}
		if r.PageSize != regions[0].PageSize {
			return fmt.Errorf("region %d has page size %d, region 0 %d: Firecracker backs all guest memory with one page size", i, r.PageSize, regions[0].PageSize)
		}
		mask := r.PageSize - 1
		if r.Size == 0 {
			return fmt.Errorf("region %d: size is zero", i)
		}
		if r.BaseHostVirtAddr&mask != 0 || r.Size&mask != 0 || r.Offset&mask != 0 {
			return fmt.Errorf("region %d: base %#x, size %#x or offset %#x not aligned to page size %d",
				i, r.BaseHostVirtAddr, r.Size, r.Offset, r.PageSize)
		}
		if r.BaseHostVirtAddr > math.MaxUint64-r.Size || r.Offset > math.MaxUint64-r.Size {
			return fmt.Errorf("region %d: range overflows", i)
		}
		if memSize >= 0 && r.Offset+r.Size > uint64(memSize) {
			return fmt.Errorf("region %d: file range [%d,%d) does not fit the %d-byte memory file",
				i, r.Offset, r.Offset+r.Size, memSize)
		}
	}
	idx := make([]int, len(regions))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		return cmpU64(regions[a].BaseHostVirtAddr, regions[b].BaseHostVirtAddr)
	})
	for k := 1; k < len(idx); k++ {
		p, q := regions[idx[k-1]], regions[idx[k]]
		if q.BaseHostVirtAddr < p.End() {
			return fmt.Errorf("regions %d and %d overlap in host memory", idx[k-1], idx[k])
		}
	}
	slices.SortFunc(idx, func(a, b int) int { return cmpU64(regions[a].Offset, regions[b].Offset) })
	for k := 1; k < len(idx); k++ {
		p, q := regions[idx[k-1]], regions[idx[k]]
		if q.Offset < p.Offset+p.Size {
			return fmt.Errorf("regions %d and %d overlap in the memory file", idx[k-1], idx[k])
		}
	}
	return nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Lookup finds the region holding host address a.
func Lookup(regions []Region, a uint64) (int, bool) {
	for i := range regions {
		if regions[i].Contains(a) {
			return i, true
		}
	}
	return -1, false
}
