package bench

import (
	"fmt"
	"time"

	"github.com/aquifer-pool/aquifer/baseline"
	"github.com/aquifer-pool/aquifer/guest"
)

// Per-restore set-up work the benchmark puts on the clock (Sample.Setup).
//
// Aquifer: the orchestrator's PUT /v1/vms/ID runs inside the guest's timed
// restore (guest.Config.Prepare), so it is in Restore already and
// Report.Prepare only says how much of it it was.
//
// REAP: the handler reads the working-set file before its socket listens,
// outside the guest's clock, and reports how long that took (`aquifer
// handle` prints baseline.WSFetchSummary). vHive runs this fetch (FetchState)
// inside its timed LoadSnapshot, concurrently with Firecracker's own
// snapshot load, and the VM's first fault waits for it: overlapREAPFetch
// accounts the restore so.

// accountSetup puts a restore's set-up work on its clock and returns it
// (Sample.Setup): strategy's guest report rep, handlerOut what its handler
// process printed (none for aquifer).
func accountSetup(rep *guest.Report, strategy, handlerOut string) (time.Duration, error) {
	if strategy != REAP {
		return rep.Prepare, nil
	}
	fetch, ok := baseline.ParseWSFetch(handlerOut)
	if !ok {
		return 0, fmt.Errorf("the reap handler printed no ws fetch time: %q", handlerOut)
	}
	overlapREAPFetch(rep, fetch)
	return fetch, nil
}

// overlapREAPFetch puts a REAP handler's WS fetch on the guest's clock,
// overlapped with the guest's own restore as vHive does: restore' =
// max(fetch, restore), and everything after the restore (first touch,
// each vCPU's end, end-to-end) moves by restore' - restore, so end-to-end
// = restore + resume wait + critical vCPU still holds.
func overlapREAPFetch(rep *guest.Report, fetch time.Duration) {
	shift := fetch - rep.Restore
	if shift <= 0 {
		return
	}
	rep.Restore += shift
	rep.EndToEnd += shift
	if rep.FirstTouch > 0 {
		rep.FirstTouch += shift
	}
	for i, e := range rep.VCPUEnd {
		if e > 0 {
			rep.VCPUEnd[i] = e + shift
		}
	}
}
