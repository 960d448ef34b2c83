package pod

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/aquifer-pool/aquifer/cxl"
)

// SlotInfo is one host slot as seen on the device.
type SlotInfo struct {
	Host      int
	Lease     uint64
	Heartbeat uint64
	ReadSeq   uint64
}

// Report summarises a pool for operators.
type Report struct {
	Geometry Geometry
	Slots    []SlotInfo // registered slots only
	States   [4]int     // descriptors per state (Free, Writing, Published, Retired)
	Torn     int        // descriptors failing their CRC
	Bytes    int64      // bytes in Published extents
}

// Inspect reads the superblock, host table and descriptors through
// invalidate-then-load. It only reads.
func Inspect(r cxl.Region) (Report, error) {
	g, err := ReadGeometry(r)
	if err != nil {
		return Report{}, err
	}
	rep := Report{Geometry: g}
	for h := 0; h < g.HostSlots; h++ {
		off := g.slotOff(h)
		r.Invalidate(off, 2*cxl.LineSize+8)
		r.FullFence()
		if r.Load64(off+slotHostID) == 0 {
			continue
		}
		rep.Slots = append(rep.Slots, SlotInfo{Host: h, Lease: r.Load64(off + slotLease),
			Heartbeat: r.Load64(off + slotHeartbeat), ReadSeq: r.Load64(off + slotReadSeq)})
	}
	scanDescs(r, g, 0, g.Descs(), func(_ int, d Desc, ok bool) {
		switch {
		case !ok && d.Gen == 0 && d.State == 0:
			rep.States[StateFree]++ // never written since format
		case !ok:
			rep.Torn++
		case int(d.State) < len(rep.States):
			rep.States[d.State]++
			if d.State == StatePublished {
				rep.Bytes += int64(d.Len)
			}
		default:
			rep.Torn++
		}
	})
	return rep, nil
}

// scanBlock is how much of the descriptor table scanDescs invalidates and
// reads at once: 4096 descriptors.
const scanBlock = 4096 * DescSize

// scanDescs calls fn with descriptors [first, first+n) of the table, in
// order: block by block, each block invalidated as a whole, fenced once and
// read in one copy. A line read after the block's invalidation is at least
// as fresh as the invalidation, which is all a scan needs (the
// per-descriptor invalidate-fence-load of loadDesc costs a fence per line:
// a full Check of a 4 GiB region's million descriptors took ~200 ms of CPU
// that way). Descriptors never written since format (all zero) are reported
// without decoding, as Desc{} failing its CRC, as loadDesc would report
// them.
func scanDescs(r cxl.Region, g Geometry, first, n int, fn func(i int, d Desc, ok bool)) {
	buf := make([]byte, min(scanBlock, n*DescSize))
	for end := first + n; first < end; first += len(buf) / DescSize {
		k := min(len(buf)/DescSize, end-first)
		b := buf[:k*DescSize]
		off := g.descOff(first)
		r.Invalidate(off, int64(len(b)))
		r.FullFence()
		r.ReadAt(b, off)
		for j := 0; j < k; j++ {
			line := b[j*DescSize : (j+1)*DescSize]
			if zeroLine(line) {
				fn(first+j, Desc{}, false)
				continue
			}
			d, ok := decodeDesc(line)
			fn(first+j, d, ok)
		}
	}
}

func zeroLine(b []byte) bool {
	le := binary.LittleEndian
	var or uint64
	for w := 0; w < len(b); w += 8 {
		or |= le.Uint64(b[w:])
	}
	return or == 0
}

// Check verifies what every host relies on: the superblock, the identity
// record and, with descs, every descriptor ever written (its CRC). A
// descriptor that fails its CRC is read again after a moment before it
// counts (its owner may have been writing it). A region that fails Check
// must be taken out of service: restores then read the RDMA copies.
func Check(r cxl.Region, descs bool) error {
	g, err := checkHeader(r)
	if err != nil || !descs {
		return err
	}
	return checkDescs(r, g, 0, g.Descs())
}

// CheckDescs is Check's descriptor check for a part of the table: up to n
// descriptors from first on (wrapping to the first descriptor at the table's
// end), after the superblock and the identity. It returns where the next
// call should start, so that a daemon checking a bounded slice on every
// sweep covers the whole table in turn: the table is 1/64 of the region (a
// 64-byte descriptor per 4 KiB page), 8 GiB on a 512 GiB device, too much to
// read at once.
func CheckDescs(r cxl.Region, first, n int) (next int, err error) {
	g, err := checkHeader(r)
	if err != nil {
		return first, err
	}
	total := g.Descs()
	if first < 0 || first >= total {
		first = 0
	}
	n = min(max(n, 0), total)
	k := min(n, total-first)
	if err := checkDescs(r, g, first, k); err != nil {
		return first, err
	}
	if k < n {
		if err := checkDescs(r, g, 0, n-k); err != nil {
			return first, err
		}
		return n - k, nil
	}
	return (first + k) % total, nil
}

func checkHeader(r cxl.Region) (Geometry, error) {
	g, err := ReadGeometry(r)
	if err != nil {
		return g, fmt.Errorf("superblock: %w", err)
	}
	if _, _, err := ReadIdentity(r); err != nil {
		return g, err
	}
	return g, nil
}

// checkDescs checks descriptors [first, first+n).
func checkDescs(r cxl.Region, g Geometry, first, n int) error {
	var torn []int
	scanDescs(r, g, first, n, func(i int, d Desc, ok bool) {
		if !ok && (d.Gen != 0 || d.State != 0) {
			torn = append(torn, i)
		}
	})
	if len(torn) == 0 {
		return nil
	}
	time.Sleep(10 * time.Millisecond)
	bad := 0
	for _, i := range torn {
		if d, ok := loadDesc(r, g.descOff(i), true); !ok && (d.Gen != 0 || d.State != 0) {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("descriptor table: %d descriptors fail their checksum (first: %d)", bad, torn[0])
	}
	return nil
}
