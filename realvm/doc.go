// Package realvm restores real Linux guests of the corpus and checks them by
// the function's own output: QEMU 7.2 (TCG) stands in for Firecracker, and
// the aqshim LD_PRELOAD shim (corpus/shim) gives it Firecracker's memory
// backends, so guest RAM reaches Aquifer's serving paths exactly as
// Firecracker's would: an anonymous private mapping registered on a
// userfaultfd and handed over with the 1.12 handshake (uffd, and with 2 MiB
// pages huge), a private mapping of the memory image (File backend), or
// FaaSnap's per-region mapping plan.
//
// Run restores one workload with one strategy (the names of package bench):
// it starts the serving side (an `aquifer handle` process, a VM prepared on a
// pager daemon, or a caller's own server), starts QEMU paused with
// -incoming defer and the shim, loads the device state (x-ignore-shared: RAM
// comes from the mapping, not the stream), resumes the VM once the serving
// side is ready, sends the input over the serial console and compares the
// runner's result digest with the one the capture recorded. Restore time,
// time to the guest's first output and end-to-end time are measured from
// QEMU's start; a wrong output, a guest crash (QEMU runs with -no-reboot, so
// a kernel panic ends it) or a hang past the deadline is a failed run.
//
// Workloads are found by name in a corpus directory (corpus.Open), not from
// a list of built-ins, so any captured function restores.
//
// This package drives QEMU and the serving side as child processes or
// through the daemon's API. It must not contain serving logic (handler,
// pager and baseline own that) nor statistics (bench owns those).
package realvm
