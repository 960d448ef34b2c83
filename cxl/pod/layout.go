package pod

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/aquifer-pool/aquifer/cxl"
)

// Format constants.
const (
	Magic            = 0x444f504c58435141 // "AQCXLPOD" read little-endian
	FormatVersion    = 1
	PageSize         = 4096
	DescSize         = cxl.LineSize // one descriptor = one cache line
	DefaultChunkSize = 2 << 20      // devdax alignment and x86 huge page
	DefaultHostSlots = 64
	minSlotSize      = 256

	// Offsets inside a host slot. Every field is written only by the
	// slot's host (invariant 1).
	slotHostID    = 0   // host index + 1 (0 = never registered)
	slotLease     = 8   // lease ID from the control plane
	slotHeartbeat = 16  // incremented on every Heartbeat
	slotReadSeq   = 128 // odd while the host is inside a read; own line
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Geometry is the layout of a formatted region, recorded in the superblock.
//
//	[0]            superblock (formatter-owned, immutable after Format)
//	[HostTableOff] HostSlots x SlotSize: one slot per host, written only by it
//	[DescOff]      Chunks x DescPerChunk x 64 B descriptors; descriptor i
//	               belongs to chunk i / DescPerChunk and is written only by
//	               that chunk's current owner
//	[DataOff]      Chunks x ChunkSize of data; extents are page runs inside
//	               one chunk
type Geometry struct {
	Size         int64
	Align        int64 // section alignment
	ChunkSize    int64
	Chunks       int
	DescPerChunk int
	HostSlots    int
	SlotSize     int64
	HostTableOff int64
	DescOff      int64
	DataOff      int64
	PodID        uint64
}

// FormatOptions choose a layout. Zero values take defaults.
type FormatOptions struct {
	ChunkSize int64  // default DefaultChunkSize; a multiple of PageSize
	HostSlots int    // default DefaultHostSlots
	PodID     uint64 // identifies this pool incarnation; default random
	// Pod, if set, records the pod the region is formatted for (its
	// identity; the first host to join adds the control plane's id).
	Pod string
}

func roundUp(v, a int64) int64 { return (v + a - 1) / a * a }

// Plan computes the geometry for a region of size bytes whose mapping
// granularity is regionAlign.
func Plan(size, regionAlign int64, o FormatOptions) (Geometry, error) {
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.HostSlots == 0 {
		o.HostSlots = DefaultHostSlots
	}
	if o.PodID == 0 {
		var b [8]byte
		rand.Read(b[:])
		o.PodID = binary.LittleEndian.Uint64(b[:]) | 1
	}
	if o.ChunkSize < PageSize || o.ChunkSize%PageSize != 0 {
		return Geometry{}, fmt.Errorf("chunk size %d is not a positive multiple of %d", o.ChunkSize, PageSize)
	}
	if o.HostSlots < 1 || o.HostSlots > 1<<15 {
		return Geometry{}, fmt.Errorf("%d host slots (want 1..32768)", o.HostSlots)
	}
	a := max(regionAlign, PageSize)
	g := Geometry{Size: size, Align: a, ChunkSize: o.ChunkSize, HostSlots: o.HostSlots, PodID: o.PodID}
	g.DescPerChunk = int(o.ChunkSize / PageSize)
	// A slot is a whole mapping unit so the host can map just its own slot
	// writable (4 KiB for shm, the device align for devdax).
	g.SlotSize = roundUp(max(minSlotSize, regionAlign), minSlotSize)
	g.HostTableOff = a
	g.DescOff = roundUp(g.HostTableOff+int64(g.HostSlots)*g.SlotSize, a)
	perChunkDesc := int64(g.DescPerChunk) * DescSize
	dataAlign := max(a, min(o.ChunkSize, DefaultChunkSize))
	for n := (size - g.DescOff) / (o.ChunkSize + perChunkDesc); n > 0; n-- {
		dataOff := roundUp(g.DescOff+n*perChunkDesc, dataAlign)
		if dataOff+n*o.ChunkSize <= size {
			g.Chunks, g.DataOff = int(n), dataOff
			return g, nil
		}
	}
	return Geometry{}, fmt.Errorf("region of %d bytes too small for one %d-byte chunk with %d host slots", size, o.ChunkSize, o.HostSlots)
}

func (g Geometry) slotOff(host int) int64   { return g.HostTableOff + int64(host)*g.SlotSize }
func (g Geometry) descOff(desc int) int64   { return g.DescOff + int64(desc)*DescSize }
func (g Geometry) chunkOff(chunk int) int64 { return g.DataOff + int64(chunk)*g.ChunkSize }

// Descs returns the total number of descriptors.
func (g Geometry) Descs() int { return g.Chunks * g.DescPerChunk }

const sbLen = 88

func (g Geometry) encode() []byte {
	b := make([]byte, 2*cxl.LineSize)
	le := binary.LittleEndian
	le.PutUint64(b[0:], Magic)
	le.PutUint32(b[8:], FormatVersion)
	le.PutUint32(b[12:], uint32(g.HostSlots))
	le.PutUint64(b[16:], uint64(g.SlotSize))
	le.PutUint64(b[24:], uint64(g.ChunkSize))
	le.PutUint32(b[32:], uint32(g.Chunks))
	le.PutUint32(b[36:], uint32(g.DescPerChunk))
	le.PutUint64(b[40:], uint64(g.HostTableOff))
	le.PutUint64(b[48:], uint64(g.DescOff))
	le.PutUint64(b[56:], uint64(g.DataOff))
	le.PutUint64(b[64:], g.PodID)
	le.PutUint64(b[72:], uint64(g.Size))
	le.PutUint64(b[80:], uint64(g.Align))
	le.PutUint32(b[sbLen:], crc32.Checksum(b[:sbLen], crcTable))
	return b
}

// ErrNotFormatted means the region holds no valid superblock.
var ErrNotFormatted = errors.New("region is not formatted (bad magic or checksum); format it with `aquifer cxl format`")

func decodeGeometry(b []byte, regionSize int64) (Geometry, error) {
	le := binary.LittleEndian
	if le.Uint64(b[0:]) != Magic || le.Uint32(b[sbLen:]) != crc32.Checksum(b[:sbLen], crcTable) {
		return Geometry{}, ErrNotFormatted
	}
	if v := le.Uint32(b[8:]); v != FormatVersion {
		return Geometry{}, fmt.Errorf("layout version %d, this build reads %d", v, FormatVersion)
	}
	g := Geometry{
		HostSlots: int(le.Uint32(b[12:])), SlotSize: int64(le.Uint64(b[16:])), ChunkSize: int64(le.Uint64(b[24:])),
		Chunks: int(le.Uint32(b[32:])), DescPerChunk: int(le.Uint32(b[36:])), HostTableOff: int64(le.Uint64(b[40:])),
		DescOff: int64(le.Uint64(b[48:])), DataOff: int64(le.Uint64(b[56:])), PodID: le.Uint64(b[64:]),
		Size: int64(le.Uint64(b[72:])), Align: int64(le.Uint64(b[80:])),
	}
	// Never trust shared memory: the geometry must be self-consistent and
	// fit the region before any offset derived from it is used.
	ok := g.Size == regionSize && g.ChunkSize >= PageSize && g.ChunkSize%PageSize == 0 &&
		int64(g.DescPerChunk) == g.ChunkSize/PageSize && g.HostSlots > 0 && g.SlotSize >= minSlotSize &&
		g.HostTableOff >= sbLen && g.DescOff >= g.HostTableOff+int64(g.HostSlots)*g.SlotSize &&
		g.DataOff >= g.DescOff+int64(g.Descs())*DescSize && g.Chunks > 0 &&
		g.DataOff+int64(g.Chunks)*g.ChunkSize <= g.Size
	if !ok {
		return Geometry{}, fmt.Errorf("superblock geometry %+v does not fit a %d-byte region", g, regionSize)
	}
	return g, nil
}

// Format writes a fresh layout to r: zeroed host table and descriptors, then
// the superblock last, each written back and fenced. It destroys the pool.
// Only the formatter may run it, with no other host attached.
func Format(r cxl.Region, o FormatOptions) (Geometry, error) {
	g, err := Plan(r.Size(), r.Align(), o)
	if err != nil {
		return g, err
	}
	if !r.Writable(0, g.DataOff) {
		return g, fmt.Errorf("format needs the metadata area [0, %d) writable", g.DataOff)
	}
	zero := make([]byte, 64<<10)
	// The identity of a previous incarnation goes with it.
	r.WriteAt(zero[:2*cxl.LineSize], identityOff)
	r.Flush(identityOff, 2*cxl.LineSize)
	if o.Pod != "" {
		if err := writeIdentity(r, Identity{Pod: o.Pod}); err != nil {
			return g, err
		}
	}
	for off := g.HostTableOff; off < g.DataOff; off += int64(len(zero)) {
		n := min(int64(len(zero)), g.DataOff-off)
		r.WriteAt(zero[:n], off)
		r.Flush(off, n)
	}
	r.Fence()
	r.WriteAt(g.encode(), 0)
	r.Flush(0, 2*cxl.LineSize)
	r.Fence()
	return g, nil
}

// ReadGeometry loads and validates the superblock through invalidate-then-load.
func ReadGeometry(r cxl.Region) (Geometry, error) {
	if r.Size() < 2*cxl.LineSize {
		return Geometry{}, ErrNotFormatted
	}
	b := make([]byte, 2*cxl.LineSize)
	r.Invalidate(0, int64(len(b)))
	r.FullFence()
	r.ReadAt(b, 0)
	return decodeGeometry(b, r.Size())
}

// Windows returns the ranges host must be able to store to: its own slot
// and, for an owner (a host that will acquire chunks), the descriptor table
// and data area. Everything else should be mapped read-only.
func (g Geometry) Windows(host int, owner bool) []cxl.Window {
	w := []cxl.Window{{Off: g.slotOff(host), Len: g.SlotSize}}
	if owner {
		w = append(w, cxl.Window{Off: g.DescOff, Len: g.DataOff + int64(g.Chunks)*g.ChunkSize - g.DescOff})
	}
	return w
}
