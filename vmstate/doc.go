// Package vmstate is a pager's durable record of one VM it serves: what a
// successor (a restarted or upgraded `aquifer serve`, a restarted `aquifer
// handle`) needs to take the VM back without the VMM noticing more than a
// pause — which VMM process (vmmproc.Identity: pid, start time, boot), which
// of its userfaultfds (by inode), the regions it registered and the
// handshake dialect — and the append-only log of the balloon (REMOVE)
// ranges the VM reported, which must read as zeros forever.
//
// A record is one JSON file written with atomicfile.Replace: atomic
// against a crash of the pager, deliberately not fsynced, because a VM
// never outlives its machine (after a reboot the record names another
// boot and is discarded). Owners embed Record in their own record type to
// add what they serve from (a snapshot, a memory file). The REMOVE log is
// written with one write(2) of 16 bytes per range on the fault loop's
// thread: the kernel keeps it when the pager is killed, without an fsync.
// A range the dying pager read from the userfaultfd but had not yet
// appended (the time of one write after the read) is lost; see
// docs/operations.md.
//
// This package owns the record formats and recovering a recorded VM's
// descriptors (through vmmproc). It must not serve pages or decide a VM's
// lifecycle.
package vmstate
