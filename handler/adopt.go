package handler

import (
	"time"

	"github.com/aquifer-pool/aquifer/uffd"
)

// A handler that takes over a VM from another process (a restarted or
// upgraded pager) serves a userfaultfd it did not receive through a
// handshake: the VM's vCPUs may be asleep on faults the previous handler
// read but never served, and balloon ranges it saw must stay zero. Before
// Serve, MarkRemoved replays the REMOVE ranges the predecessor logged;
// once Serve runs, WakeAll releases the sleeping vCPUs, which fault again
// and are served here (serving a page that is present already is EEXIST,
// answered with a wake: harmless).

// MarkRemoved marks [start, end) (host addresses) removed, as a REMOVE
// event would, without counting it as an event or reporting it to
// Options.OnRemove: a range a predecessor already saw and logged. Safe
// while Serve runs.
func (h *Handler) MarkRemoved(start, end uint64) { h.applyRemove(start, end, false) }

// WakeAll wakes every thread waiting on a fault anywhere in the VM's
// registered regions (UFFDIO_WAKE over each whole region): faults a
// previous handler read from this userfaultfd and never answered. A woken
// thread retries its access and faults again if the page is still
// missing. A VM that is gone is not an error.
func (h *Handler) WakeAll() error {
	for _, r := range h.regions {
		if err := h.u.Wake(uintptr(r.BaseHostVirtAddr), uintptr(r.Size)); err != nil && !uffd.IsGone(err) {
			return err
		}
	}
	return nil
}

// FirstServed returns when this handler first served a fault (zero time:
// none yet).
func (h *Handler) FirstServed() time.Time {
	if ns := h.firstServed.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

func (h *Handler) served() {
	if h.firstServed.Load() == 0 {
		h.firstServed.CompareAndSwap(0, time.Now().UnixNano())
	}
}
