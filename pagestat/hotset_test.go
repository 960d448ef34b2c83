package pagestat

import (
	"bytes"
	"testing"

	"github.com/aquifer-pool/aquifer/wset"
)

// A 3-huge-page memory: huge page 0 has sub-pages 0..3 non-zero, huge page
// 1 is all zero, huge page 2 has sub-page 1030 non-zero. The recording
// touches sub-pages 0, 1, 2 and 1030 (and zero sub-page 600); the
// evaluation trace touches 3 and 700. Every number follows by hand.
func TestHotSetTradeoff(t *testing.T) {
	const huge = 2 << 20
	mem := make([]byte, 3*huge)
	for _, s := range []int{0, 1, 2, 3, 1030} {
		mem[s*4096+5] = 1
	}
	tr := func(pages ...uint64) *wset.Trace {
		t := &wset.Trace{PageSize: 4096, MemSize: uint64(len(mem))}
		for i, p := range pages {
			t.Accesses = append(t.Accesses, wset.Access{Page: p, T: 0, Kind: wset.Read, CPU: uint8(i % 2)})
		}
		return t
	}
	rec, eval := tr(0, 1, 2, 1030, 600), tr(3, 700)
	pts, err := HotSetTradeoff(bytes.NewReader(mem), int64(len(mem)), rec, []*wset.Trace{eval}, []int{huge}, []int{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	want := []HotSetPoint{
		// 4 KiB: hot 0,1,2,1030; eval touches 3 (non-zero, not hot: one
		// fault) and 700 (zero); all four hot pages are wasted.
		{PageSize: 4096, MinTouched: 1, HotPages: 4, InstalledBytes: 4 * 4096, StoredBytes: 4 * 4096, EvalFaults: 1, EvalWasted: 4},
		// 2 MiB, k=1: huge pages 0 and 2 hot (1 is zero); eval touches
		// huge 0 (hot) and 1 (zero): no fault; huge 2 wasted.
		{PageSize: huge, MinTouched: 1, HotPages: 2, InstalledBytes: 2 * huge, StoredBytes: 5 * 4096, EvalFaults: 0, EvalWasted: 1},
		// k=2: only huge page 0 (three touched sub-pages).
		{PageSize: huge, MinTouched: 2, HotPages: 1, InstalledBytes: huge, StoredBytes: 4 * 4096, EvalFaults: 0, EvalWasted: 0},
	}
	if len(pts) != len(want) {
		t.Fatalf("%d points: %+v", len(pts), pts)
	}
	for i := range want {
		if pts[i] != want[i] {
			t.Errorf("point %d: got %+v\nwant %+v", i, pts[i], want[i])
		}
	}
	if _, err := HotSetTradeoff(bytes.NewReader(mem), int64(len(mem)), &wset.Trace{PageSize: huge}, nil, nil, nil); err == nil {
		t.Fatal("a 2 MiB recording accepted")
	}
}
