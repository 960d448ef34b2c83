// Package pager is Aquifer's per-VM page server for the hierarchical pool:
// the copy-and-demand paging that restores a Firecracker VM from an Aquifer
// image whose hot segment lives in the CXL tier and whose cold segment lives
// on RDMA memory nodes.
//
// One Session serves one VM, on top of package handler's fault loop:
//
//  1. The fault loop starts first, so faults raised while Firecracker
//     restores devices (before resume) are served at once.
//  2. Pre-install: the hot segment (HotSource: a validated CXL extent, or
//     a local copy) is installed in first-touch order, one UFFDIO_COPY per
//     hot run with DONTWAKE and no wake of its own (a vCPU that faulted on
//     such a page is woken when the fault loop serves its event), each
//     run's pages checked against the image's digests just before its copy
//     (preinstall.go); the runs are shared with a helper goroutine on each
//     CPU no other pre-install is using. Ready() closes when it
//     is done: the orchestrator resumes the VM only then — or, with
//     Options.EarlyResume, as soon as the long zero runs are set up, the
//     hot set then streaming in while the VM runs.
//  3. Zero pages are never stored and never reach the fault loop: runs of
//     64 pages and more are unregistered before resume, so the kernel fills
//     them on touch; shorter ones are mapped to the kernel's zero page
//     right after resume (UFFDIO_ZEROPAGE, which does not split the VM's
//     mapping as an unregister would); a zero page faulted before its run
//     is set up gets UFFDIO_ZEROPAGE from the fault loop.
//  4. Cold faults: the faulting page's cold extent (its recorded neighbours)
//     is read in one batched read from the ColdSource into an off-heap arena,
//     verified, the faulting page installed and woken first, the rest of the
//     extent installed right after on a background goroutine. The read is
//     made on the fault loop's reader thread (Inline): a hand-off to a
//     worker thread costs a scheduler wake-up, dearer than the read.
//  5. A background prefetcher streams the cold extents past restores touched,
//     in touch order, at low priority; demand reads always go first, and an
//     extent being prefetched is shared with a demand fault, never read
//     twice.
//  6. Learned cold pages (Options.History, history.go and learned.go): the
//     cold pages earlier restores of the same image faulted on (other
//     inputs than the recording's) are read beside the pre-install into a
//     buffer of the session's own, verified, and installed once the hot set
//     is in, before the VM is reported ready as far as they have arrived
//     (the wait is bounded); the cold pages this VM still faults on are
//     added to the history when it ends.
//
// Every page installed from a tier is checked against the image's xxhash64
// digest first: a corrupt or stale tier can fail a restore, never feed the
// guest a wrong page.
//
// The pager owns this policy. It must not implement tiers (package cxl and
// rdma do, behind HotSource and ColdSource), parse handshakes or talk to the
// control plane (the serve daemon does).
package pager
