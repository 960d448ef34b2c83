// Package vmmproc identifies a VMM process (Firecracker) across the lives of
// its pagers and takes back the descriptors it holds: what a restarted
// pager needs to serve a VM whose userfaultfd the dead one received.
//
// A VMM is named by an Identity: its pid, its start time (field 22 of
// /proc/PID/stat, clock ticks after boot) and the machine's boot id, so a
// pid the kernel has since given to another process, or a record from
// before a reboot, is never mistaken for the VMM. A Process is an open
// pidfd bound to that very process (readable once it exits).
//
// Process.TakeUFFD finds the VMM's userfaultfd among its descriptors (the
// ones whose /proc/PID/fd link is anon_inode:[userfaultfd]), copies it into
// this process with pidfd_getfd(2) and checks it is the one the handshake
// delivered (same inode; when a process holds several, the inode tells
// them apart, and kcmp(2) tells duplicates of one file from distinct
// files). pidfd_getfd needs PTRACE_MODE_ATTACH_REALCREDS over the VMM:
// the same uid (and no Yama restriction), or CAP_SYS_PTRACE — a root
// daemon serving Firecracker under the jailer (another uid) has it.
//
// This package owns process identity and descriptor recovery only. It must
// not interpret what it recovers (serving is package handler's) or decide
// which VMs to take back (the daemon does).
package vmmproc
