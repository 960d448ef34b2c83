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
// Crash safety: the daemon keeps no state that a restart could get wrong.
// Catalog and placement live behind the opener, every page from a tier is
// digest-verified, and a VM whose pager died is not resumed again.
//
// This package owns VM lifecycle, the control API's server side and
// metrics. It must not implement paging policy (package pager), tiers or
// the catalog (behind restore.Opener), and must not import the control
// plane.
package pagerd
