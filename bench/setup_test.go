package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/baseline"
	"github.com/aquifer-pool/aquifer/guest"
	"github.com/aquifer-pool/aquifer/handler"
)

const msec = time.Millisecond

// reapReport is a guest report of a REAP restore: restore 2 ms, resume
// wait 1 ms, vCPU 0 done at 6 ms, vCPU 1 (critical) at 9 ms.
func reapReport() *guest.Report {
	return &guest.Report{Restore: 2 * msec, ResumeWait: 1 * msec, FirstTouch: 3500 * time.Microsecond,
		EndToEnd: 9 * msec, VCPUEnd: []time.Duration{6 * msec, 9 * msec}}
}

// handlerLine is the summary line `aquifer handle --reap-ws` prints.
func handlerLine(fetch time.Duration) string {
	st := handler.Stats{Faults: 7, BytesCopied: 7 << 12, Installed: 40, Exit: "vm exited"}
	return "aquifer handle: " + st.String() + "; " + baseline.WSFetchSummary(fetch) + "\n"
}

// TestAccountSetupREAPOverlaps: a WS fetch longer than the guest's restore
// becomes the restore (max overlap), everything after it moves by the
// difference, and end-to-end = restore + resume wait + critical vCPU
// still holds in the sample's breakdown; a shorter fetch hides under the
// restore and changes nothing.
func TestAccountSetupREAPOverlaps(t *testing.T) {
	c := &classes{hot: map[uint64]bool{}}
	for _, tc := range []struct {
		fetch                time.Duration
		restore, e2e, first  time.Duration
		end0, end1, critical time.Duration
	}{
		{fetch: 5 * msec, restore: 5 * msec, e2e: 12 * msec, first: 6500 * time.Microsecond, end0: 9 * msec, end1: 12 * msec, critical: 6 * msec},
		{fetch: 1 * msec, restore: 2 * msec, e2e: 9 * msec, first: 3500 * time.Microsecond, end0: 6 * msec, end1: 9 * msec, critical: 6 * msec},
		{fetch: 2 * msec, restore: 2 * msec, e2e: 9 * msec, first: 3500 * time.Microsecond, end0: 6 * msec, end1: 9 * msec, critical: 6 * msec},
	} {
		rep := reapReport()
		setup, err := accountSetup(rep, REAP, handlerLine(tc.fetch))
		if err != nil {
			t.Fatal(err)
		}
		if setup != tc.fetch {
			t.Errorf("fetch %v: setup %v", tc.fetch, setup)
		}
		if rep.Restore != tc.restore || rep.EndToEnd != tc.e2e || rep.FirstTouch != tc.first ||
			rep.VCPUEnd[0] != tc.end0 || rep.VCPUEnd[1] != tc.end1 {
			t.Errorf("fetch %v: restore %v e2e %v first touch %v vcpu ends %v; want %v %v %v [%v %v]",
				tc.fetch, rep.Restore, rep.EndToEnd, rep.FirstTouch, rep.VCPUEnd, tc.restore, tc.e2e, tc.first, tc.end0, tc.end1)
		}
		b := breakdown(rep, c)
		if b.Critical != tc.critical || rep.Restore+b.ResumeWait+b.Critical != rep.EndToEnd {
			t.Errorf("fetch %v: breakdown restore %v + resume wait %v + critical %v != end-to-end %v (want critical %v)",
				tc.fetch, rep.Restore, b.ResumeWait, b.Critical, rep.EndToEnd, tc.critical)
		}
	}
}

// TestAccountSetupAquifer: the PUT is already inside the guest's restore;
// the sample only reports it.
func TestAccountSetupAquifer(t *testing.T) {
	rep := reapReport()
	rep.Prepare = 1500 * time.Microsecond
	setup, err := accountSetup(rep, Aquifer, "")
	if err != nil || setup != rep.Prepare || rep.Restore != 2*msec || rep.EndToEnd != 9*msec {
		t.Fatalf("setup %v err %v, report %+v", setup, err, rep)
	}
}

// TestAccountSetupREAPNeedsFetch: a REAP handler whose summary has no
// fetch time (an older binary) is an error, not a restore off the clock.
func TestAccountSetupREAPNeedsFetch(t *testing.T) {
	line := handlerLine(3 * msec)
	line = line[:strings.Index(line, "; ws fetch")] + "\n"
	if _, err := accountSetup(reapReport(), REAP, line); err == nil || !strings.Contains(err.Error(), "no ws fetch") {
		t.Fatalf("want a missing ws fetch error, got %v", err)
	}
}
