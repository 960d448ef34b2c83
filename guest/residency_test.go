package guest

import "testing"

// TestResidencyOf: the smaps scan sums Rss and Anonymous over the
// mappings inside the guest's regions only, whole or split.
func TestResidencyOf(t *testing.T) {
	smaps := `7f0000000000-7f0000200000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                 512 kB
Anonymous:           500 kB
7f0000200000-7f0000400000 rw-p 00000000 00:00 0
Rss:                 100 kB
Anonymous:             0 kB
7f0000400000-7f0000600000 rw-p 00000000 08:01 1234                       /tmp/mem
Rss:                  64 kB
Anonymous:            16 kB
55d000000000-55d000100000 r-xp 00000000 08:01 99                         /usr/bin/x
Rss:                4096 kB
Anonymous:          4096 kB
VmFlags: rd wr mr mw me ac
`
	got := residencyOf([]byte(smaps), [][2]uint64{{0x7f0000000000, 0x7f0000600000}})
	want := Residency{Private: (500 + 0 + 16) << 10, FileMapped: (12 + 100 + 48) << 10}
	if got != want {
		t.Fatalf("residencyOf = %+v, want %+v", got, want)
	}
	if got := residencyOf([]byte(smaps), nil); got != (Residency{}) {
		t.Fatalf("no regions: %+v", got)
	}
	if got := residencyOf([]byte("garbage\n-\nRss: x kB\n"), [][2]uint64{{0, 1 << 62}}); got != (Residency{}) {
		t.Fatalf("garbage: %+v", got)
	}
}
