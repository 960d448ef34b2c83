// Package wset owns the working-set / page-access trace: which guest pages an
// invocation touched, how (read, write, execute), in what order and when.
//
// One type serves three roles: a recording made by `aquifer handle --record`
// (first touch per page, in fault order), a trace captured from a real guest
// by the corpus pipeline, and the script the guest emulator replays. Pages are
// identified by their index in the Firecracker memory file (file offset /
// page size), which does not depend on how the VMM lays out host memory.
//
// A working set is bound to the snapshot memory it was recorded from: the
// trace carries that memory file's Fingerprint (size and xxhash64 of the
// content), set by every producer (Bind), and CheckMemory is the one check
// that a command using a working set with a memory file (convert, the
// baselines, hot-set analysis) applies: a foreign working set is refused
// unless the user says otherwise, an unbound one (format version 1) is a
// warning.
//
// The on-disk format is documented in docs/format.md. This package must not
// import any other Aquifer package.
package wset
