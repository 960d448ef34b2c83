package pod

import (
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
	for i := 0; i < g.Descs(); i++ {
		d, ok := loadDesc(r, g.descOff(i), true)
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
	}
	return rep, nil
}

// Check verifies what every host relies on: the superblock, the identity
// record and, with descs, every descriptor ever written (its CRC). A
// descriptor that fails its CRC is read again after a moment before it
// counts (its owner may have been writing it). A region that fails Check
// must be taken out of service: restores then read the RDMA copies.
func Check(r cxl.Region, descs bool) error {
	g, err := ReadGeometry(r)
	if err != nil {
		return fmt.Errorf("superblock: %w", err)
	}
	if _, _, err := ReadIdentity(r); err != nil {
		return err
	}
	if !descs {
		return nil
	}
	var torn []int
	for i := 0; i < g.Descs(); i++ {
		if d, ok := loadDesc(r, g.descOff(i), true); !ok && (d.Gen != 0 || d.State != 0) {
			torn = append(torn, i)
		}
	}
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
