package baseline

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/aquifer-pool/aquifer/internal/atomicfile"

	"github.com/aquifer-pool/aquifer/guest"
	"github.com/aquifer-pool/aquifer/pagestat"
	"github.com/aquifer-pool/aquifer/wset"
)

// FaaSnapGap is the longest run of zero pages inside a non-zero region that
// FaaSnap merges into the region rather than leaving anonymous (its
// non-zero scan merges small gaps to bound the number of mappings).
const FaaSnapGap = 32

// BuildFaaSnap writes FaaSnap's loading-set file (<dir>/loading-set: the
// recorded working set minus zero pages, in first-touch order) and its
// mapping plan (<dir>/faasnap.json) for mem, and returns the plan's path.
func BuildFaaSnap(memPath string, rec *wset.Trace, dir string) (string, error) {
	mem, err := os.Open(memPath)
	if err != nil {
		return "", err
	}
	defer mem.Close()
	st, err := mem.Stat()
	if err != nil {
		return "", err
	}
	ps := uint64(rec.PageSize)
	zero, _, err := pagestat.ZeroPages(mem, st.Size(), int(ps), nil)
	if err != nil {
		return "", err
	}
	pages := (uint64(st.Size()) + ps - 1) / ps
	plan := guest.FaaSnapPlan{PageSize: ps, MemSize: uint64(st.Size()), LoadingSet: filepath.Join(dir, "loading-set")}
	// Non-zero regions, small zero gaps merged.
	for p := uint64(0); p < pages; {
		if zero.Get(p) {
			p++
			continue
		}
		start, end := p, p+1
		for q := end; q < pages; q++ {
			if !zero.Get(q) {
				end = q + 1
			} else if q-end >= FaaSnapGap {
				break
			}
		}
		plan.NonZero = append(plan.NonZero, [2]uint64{start, end - start})
		p = end
	}
	// The loading set, in first-touch order.
	err = atomicfile.Write(plan.LoadingSet, 0o644, func(w io.Writer) error {
		buf := make([]byte, ps)
		var n uint64
		for _, a := range rec.FirstTouches() {
			if a.Page >= pages || zero.Get(a.Page) {
				continue
			}
			if _, err := mem.ReadAt(buf, int64(a.Page*ps)); err != nil && err != io.EOF {
				return fmt.Errorf("reading page %d: %w", a.Page, err)
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
			if k := len(plan.LS) - 1; k >= 0 && plan.LS[k][0]+plan.LS[k][2] == a.Page && plan.LS[k][1]+plan.LS[k][2] == n {
				plan.LS[k][2]++
			} else {
				plan.LS = append(plan.LS, [3]uint64{a.Page, n, 1})
			}
			n++
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(plan)
	out := filepath.Join(dir, "faasnap.json")
	return out, atomicfile.WriteFile(out, b, 0o644)
}
