// Package handler serves the page faults of one Firecracker VM from a
// memory-file source: the on-demand UFFD backend that Firecracker's
// examples/uffd on_demand_handler implements, made concurrent and
// balloon-safe. `aquifer handle` is a thin wrapper around it; REAP-style
// recording hooks in here, and the Aquifer pager builds on the same loop.
//
// Shape: one event reader on a locked OS thread polls the userfaultfd, the
// VM's pidfd, the 1.12+ handshake socket and a stop eventfd; it decodes
// events, applies REMOVE ranges to a per-page "removed" bitmap, serves the
// last fault of each batch itself when the source says it will not block
// (a thread hand-off costs as much as the copy on virtualised hosts) and
// hands the others to a pool of workers, each on its own locked OS thread,
// so faults of several vCPUs are served concurrently. Install, ZeroQuiet
// and LeaveToKernel let a pager place pages (or the zero page) ahead of
// faults and leave zero ranges to the kernel under the same REMOVE rules. A fault is served by
// installing a page with one UFFDIO_COPY straight from
// the mmap'd source (no intermediate buffer); a page inside a removed range
// gets UFFDIO_ZEROPAGE (or a copy of zeros for 2 MiB pages) and never
// snapshot content again. EEXIST is answered with UFFDIO_WAKE, EAGAIN by
// waiting for the reader to drain pending events and retrying, ENOENT (the
// page was unregistered meanwhile) with UFFDIO_WAKE, and ESRCH ends
// serving: the VM is gone. A VM that nothing watches (no pidfd, no
// handshake socket) is probed after each quiet poll by re-installing a page
// already copied, so its death ends serving too.
//
// Removal and copy are serialised by a reader/writer lock (copies share it,
// a REMOVE takes it exclusively), so a copy that began before a REMOVE was
// read finishes before the bitmap changes and every copy after it sees the
// change. A guest never faults on a page it has just given to the balloon,
// so demand faults cannot race the kernel's zap of that range.
//
// 2 MiB guests (hugetlbfs-backed, Firecracker's huge_pages "2M") are served
// the same way in 2 MiB pages; what a REMOVE means there and how an
// exhausted hugetlb pool is told from a present page is in huge.go.
//
// This package owns the serving loop and its statistics. It must not parse
// handshakes (package handshake) or know about tiers (the pager does).
package handler
