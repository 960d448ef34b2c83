package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/hugetlb/hugetlbtest"
)

// TestHugeRealGuestThroughPool restores the real helloworld guest with 2
// MiB pages: QEMU's guest RAM is hugetlb memory mapped by the shim's huge
// mode (page_size 2097152 in the 1.12 handshake, one 2 MiB-aligned
// region), served by the pod's pager daemon from a 2 MiB image published
// into the pool (hot huge pages from CXL, cold ones from the memory
// nodes), and by aquifer handle for comparison; the function's output must
// be the one the capture recorded.
func TestHugeRealGuestThroughPool(t *testing.T) {
	dir, w := realHelloworld(t)
	hugetlbtest.Need(t, int(w.Meta.MemSize>>21)+8)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	want, _ := w.Expected(w.Meta.EvalInputs[0])
	s := startPool(t, ctx, t.TempDir(), "--huge-pages", "8")
	for _, strategy := range []string{"aquifer", "firecracker-uffd"} {
		res, err := vmRun(t, "--workload", "helloworld", "--strategy", strategy, "--corpus", dir, "--api", s.api, "--huge-pages")
		if err != nil || !res.OutputOK || res.Digest != want.Digest {
			t.Fatalf("%s with 2 MiB pages: %+v: %v", strategy, res, err)
		}
		if res.Backend != "huge" || res.Faults == 0 || res.Faults > w.Meta.MemSize>>21 {
			t.Fatalf("%s: backend %s, %d faults for a guest of %d huge pages", strategy, res.Backend, res.Faults, w.Meta.MemSize>>21)
		}
		if strategy == "aquifer" && res.HotSource != "cxl" {
			t.Fatalf("aquifer: hot set from %q, want cxl", res.HotSource)
		}
		t.Logf("%s, 2 MiB pages: output %s, %d faults, restore %v, end-to-end %v", strategy, res.Output, res.Faults,
			time.Duration(res.RestoreNs), time.Duration(res.EndToEndNs))
	}
}
