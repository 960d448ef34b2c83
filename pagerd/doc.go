// Package pagerd is the per-host pager daemon behind `aquifer serve`: it
// serves many VMs at once, each through its own pager.Session, and exposes
// the control API (package api documents the wire contract) on a Unix
// socket, mode 0600, answering only its own uid and root.
//
// A restore goes: PUT /v1/vms/{id} prepares it — the snapshot is opened
// once through a restore.Opener (the pool, or a directory of images), which
// resolves everything the restore path needs, and the daemon listens on a
// per-VM UFFD socket; the orchestrator passes that socket to Firecracker's
// snapshot load as mem_backend.backend_path; Firecracker connects and sends
// its userfaultfd (handshake.Accept: only the VMM the PUT names — vmm_uid,
// default the daemon's VMM uid, and vmm_pid if given — is admitted, others
// are refused without consuming the socket, which is given to the VMM's
// uid when that is not the daemon's: vmm.go); the session
// pre-installs the hot set; /ready answers; the orchestrator resumes the VM.
//
// Isolation: each VM has its own socket, session, goroutines and arena; a
// failing VM is marked failed and torn down without touching the others,
// and a VM is only ever served the pages of the snapshot it was prepared
// with. Each daemon locks its socket directory: two daemons never share one.
//
// Crash safety and upgrades: every VM is recorded in the state directory
// (state.go: the snapshot and image it is served, its VMM's identity, the
// userfaultfd's inode and the regions, written before the VM can be ready;
// its balloon ranges in an append-only log) and forgotten when it exits;
// what the daemon learned of each image's cold pages (pager.History) is
// kept there too (learned.go), a hint a successor starts from. A
// daemon started on the same directories takes every VM whose VMM still
// runs back from the VMM itself and serves it on (adopt.go); a successor
// started with Config.HandoffFrom receives the running daemon's VMs, locks
// and API socket and serves before the predecessor stops (handoff.go).
// Catalog and placement live behind the opener, every page from a tier is
// digest-verified, and a VM is only ever served again from the same image.
//
// This package owns VM lifecycle, the control API's server side and
// metrics. It must not implement paging policy (package pager), tiers or
// the catalog (behind restore.Opener), and must not import the control
// plane.
package pagerd
