package pod

import (
	"testing"

	"github.com/aquifer-pool/aquifer/cxl"
)

// FuzzDecodeGeometry: any superblock bytes either decode to a geometry that
// fits the region or are rejected; never a panic, never an out-of-range
// layout.
func FuzzDecodeGeometry(f *testing.F) {
	g, _ := Plan(64<<20, 4096, FormatOptions{})
	f.Add(g.encode(), int64(64<<20))
	f.Add(make([]byte, 2*cxl.LineSize), int64(1<<20))
	f.Fuzz(func(t *testing.T, b []byte, size int64) {
		if len(b) < 2*cxl.LineSize {
			b = append(b, make([]byte, 2*cxl.LineSize-len(b))...)
		}
		g, err := decodeGeometry(b, size)
		if err != nil {
			return
		}
		if g.DataOff+int64(g.Chunks)*g.ChunkSize > size || g.DescOff+int64(g.Descs())*DescSize > g.DataOff {
			t.Fatalf("accepted geometry overflows the region: %+v", g)
		}
	})
}

// FuzzDecodeDesc: descriptor decoding never panics and a valid CRC implies
// the line round-trips.
func FuzzDecodeDesc(f *testing.F) {
	d := Desc{Gen: 4, Token: 9, Key: 1, Off: 1 << 21, Len: 4096, State: StatePublished, Owner: 1, Hash: 77, Aux: 3}
	b := d.encode()
	f.Add(b[:])
	f.Add(make([]byte, DescSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < DescSize {
			return
		}
		d, ok := decodeDesc(b[:DescSize])
		if ok {
			e := d.encode()
			if string(e[:60]) != string(b[:60]) {
				t.Fatalf("CRC-valid descriptor does not round-trip")
			}
		}
	})
}
