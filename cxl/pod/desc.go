package pod

import (
	"encoding/binary"
	"hash/crc32"

	"github.com/aquifer-pool/aquifer/cxl"
)

// Descriptor states. The generation is odd exactly while the state is
// Writing; readers accept only Published descriptors with the generation the
// control plane recorded.
const (
	StateFree      = 0
	StateWriting   = 1
	StatePublished = 2
	StateRetired   = 3
)

// Desc is the decoded 64-byte descriptor line:
//
//	0  gen   u64  odd = WRITING; bumped on every transition, never reused
//	8  token u64  fencing token of the owner that wrote it
//	16 key   u64  hash of the catalog key (diagnostics, recovery)
//	24 off   u64  extent offset in the region
//	32 len   u32  extent length
//	36 state u8
//	38 owner u16  host index of the writer
//	40 hash  u64  xxhash64 of the extent's bytes
//	48 aux   u64  publish serial of the owner (diagnostics, tests)
//	56 crc   u32  CRC-32C of bytes [0, 56); byte 37 and bytes [60, 64) are zero
type Desc struct {
	Gen, Token, Key, Off uint64
	Len                  uint32
	State                uint8
	Owner                uint16
	Hash, Aux            uint64
}

func (d *Desc) encode() [DescSize]byte {
	var b [DescSize]byte
	le := binary.LittleEndian
	le.PutUint64(b[0:], d.Gen)
	le.PutUint64(b[8:], d.Token)
	le.PutUint64(b[16:], d.Key)
	le.PutUint64(b[24:], d.Off)
	le.PutUint32(b[32:], d.Len)
	b[36] = d.State
	le.PutUint16(b[38:], d.Owner)
	le.PutUint64(b[40:], d.Hash)
	le.PutUint64(b[48:], d.Aux)
	le.PutUint32(b[56:], crc32.Checksum(b[:56], crcTable))
	return b
}

// decodeDesc returns the descriptor and whether its checksum matches (a line
// evicted while the owner was half-way through rewriting it fails the check).
func decodeDesc(b []byte) (Desc, bool) {
	le := binary.LittleEndian
	d := Desc{
		Gen: le.Uint64(b[0:]), Token: le.Uint64(b[8:]), Key: le.Uint64(b[16:]), Off: le.Uint64(b[24:]),
		Len: le.Uint32(b[32:]), State: b[36], Owner: le.Uint16(b[38:]), Hash: le.Uint64(b[40:]), Aux: le.Uint64(b[48:]),
	}
	// The pad byte must be zero so a CRC-valid line has one meaning.
	return d, b[37] == 0 && le.Uint32(b[56:]) == crc32.Checksum(b[:56], crcTable)
}

// storeDesc writes the line word by word with the generation LAST, so any
// partial write-back (eviction mid-update) either still shows the previous
// generation or fails the CRC. It does not flush.
func storeDesc(r cxl.Region, off int64, d *Desc) {
	b := d.encode()
	le := binary.LittleEndian
	for w := 1; w < DescSize/8; w++ {
		r.Store64(off+int64(w*8), le.Uint64(b[w*8:]))
	}
	r.Store64(off, le.Uint64(b[0:]))
}

// loadDesc invalidates the descriptor line, waits (MFENCE) and loads it.
func loadDesc(r cxl.Region, off int64, invalidate bool) (Desc, bool) {
	if invalidate {
		r.Invalidate(off, DescSize)
		r.FullFence()
	}
	var b [DescSize]byte
	r.ReadAt(b[:], off)
	return decodeDesc(b[:])
}
