package bench

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/aquifer-pool/aquifer/guest"
	"github.com/aquifer-pool/aquifer/pagestat"
	"github.com/aquifer-pool/aquifer/wset"
)

// Page classes of a snapshot, as Aquifer's image splits it (the same split
// is used for every strategy, so their breakdowns compare).
const (
	ClassHot  = "hot"  // non-zero and in the recorded working set
	ClassCold = "cold" // non-zero, not recorded
	ClassZero = "zero" // all-zero in the snapshot
)

// classes maps every page of a workload's memory file to its class.
type classes struct {
	zero pagestat.Bitmap
	hot  map[uint64]bool
}

func loadClasses(mem string, rec *wset.Trace) (*classes, error) {
	f, err := os.Open(mem)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	zero, _, err := pagestat.ZeroPages(f, st.Size(), 4096, nil)
	if err != nil {
		return nil, err
	}
	c := &classes{zero: zero, hot: map[uint64]bool{}}
	for _, a := range rec.FirstTouches() {
		if !zero.Get(a.Page) {
			c.hot[a.Page] = true
		}
	}
	return c, nil
}

func (c *classes) of(p uint64) string {
	switch {
	case c.zero.Get(p):
		return ClassZero
	case c.hot[p]:
		return ClassHot
	}
	return ClassCold
}

// SlowTouch is the first-access time above which a touch counts as a
// fault that waited (a present page costs well under a microsecond; the
// cheapest fault here costs several).
const SlowTouch = 5 * time.Microsecond

// ClassStall is what first accesses of one page class cost the vCPU on the
// critical path (the vCPU that finished last).
type ClassStall struct {
	Pages int           `json:"pages"`        // first accesses
	Slow  int           `json:"slow"`         // of them, longer than SlowTouch: faults that waited
	Stall time.Duration `json:"stall_ns"`     // their summed time
	All   time.Duration `json:"all_vcpus_ns"` // the same over every vCPU
}

// Breakdown explains one restore's end-to-end time.
type Breakdown struct {
	// ResumeWait is the time from the end of the restore to the resume
	// (the pager's pre-install, for aquifer).
	ResumeWait time.Duration `json:"resume_wait_ns"`
	// Critical is the critical vCPU's replay time (end-to-end = restore +
	// resume wait + Critical).
	Critical time.Duration         `json:"critical_vcpu_ns"`
	Classes  map[string]ClassStall `json:"classes"`
	// Pager is the pager's own report (aquifer strategies): pre-install
	// time and pages, zero pages left to the kernel, faults per class,
	// cold bytes and read time.
	Pager *PagerCounts `json:"pager,omitempty"`
	// HandlerFaults are the faults a uffd handler served (firecracker-uffd,
	// reap).
	HandlerFaults uint64 `json:"handler_faults,omitempty"`
}

// PagerCounts are the parts of the pager's report (api.Report) a breakdown
// shows.
type PagerCounts struct {
	Preinstall      time.Duration `json:"preinstall_ns"`
	PreinstallPages uint64        `json:"preinstall_pages"`
	PreinstallBytes uint64        `json:"preinstall_bytes,omitempty"`
	ZeroToKernel    uint64        `json:"zero_pages_to_kernel"`
	HotFaults       uint64        `json:"hot_faults"`
	ColdFaults      uint64        `json:"cold_faults"`
	ZeroFaults      uint64        `json:"zero_faults"`
	ColdBytes       uint64        `json:"cold_bytes"`
	ColdRead        time.Duration `json:"cold_read_ns"`
	// LearnedPages are cold pages installed ahead because earlier restores
	// of the snapshot faulted on them (serve --learned-cold), of which
	// LearnedBeforeReady before the VM was ready.
	LearnedPages       uint64 `json:"learned_pages,omitempty"`
	LearnedBeforeReady uint64 `json:"learned_before_ready,omitempty"`
}

func breakdown(rep *guest.Report, c *classes) *Breakdown {
	b := &Breakdown{ResumeWait: rep.ResumeWait, Classes: map[string]ClassStall{}}
	crit := -1
	for i, e := range rep.VCPUEnd {
		if crit < 0 || e > rep.VCPUEnd[crit] {
			crit = i
		}
	}
	if crit >= 0 {
		b.Critical = rep.VCPUEnd[crit] - rep.Restore - rep.ResumeWait
	}
	for _, t := range rep.Touches {
		cl := c.of(t.Page)
		s := b.Classes[cl]
		d := time.Duration(t.NS)
		s.All += d
		if t.CPU == crit {
			s.Pages++
			s.Stall += d
			if d > SlowTouch {
				s.Slow++
			}
		}
		b.Classes[cl] = s
	}
	return b
}

// pagerCounts asks the pod's daemon for VM id's pager report, waiting
// (bounded) until the daemon has seen the VM exit.
func pagerCounts(ctx context.Context, api, id string) (*PagerCounts, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		rep, done, err := vmReport(ctx, api, id)
		if err != nil {
			return nil, err
		}
		if done {
			if rep == nil {
				return nil, fmt.Errorf("the daemon has no report for VM %s", id)
			}
			return &PagerCounts{Preinstall: time.Duration(rep.PreinstallNS), PreinstallPages: rep.PreinstallPages,
				PreinstallBytes: rep.PreinstallBytes, ZeroToKernel: rep.ZeroPagesToKernel,
				HotFaults: rep.HotFaults, ColdFaults: rep.ColdFaults, ZeroFaults: rep.ZeroFaults, ColdBytes: rep.ColdBytesRead,
				ColdRead: time.Duration(rep.ColdReadNS), LearnedPages: rep.LearnedPages, LearnedBeforeReady: rep.LearnedBeforeReady}, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("VM %s: the daemon did not report its exit: %w", id, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}
