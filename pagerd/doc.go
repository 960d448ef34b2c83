// Package pagerd is the per-host pager daemon behind `aquifer serve`: it
// serves many VMs at once, each through its own pager.Session, and exposes
// a control API for the orchestrator on a Unix socket (HTTP, mode 0600,
// peer credentials checked):
//
//	PUT    /v1/vms/{id}        {"snapshot": NAME[, "early_resume": true]}  → 201 {"id", "snapshot", "uffd_socket"}
//	GET    /v1/vms/{id}                             → the VM's state and report
//	GET    /v1/vms/{id}/ready?timeout=10s           → 200 once the hot set is installed
//	DELETE /v1/vms/{id}                             → stop serving it
//	GET    /v1/vms                                  → all VMs
//	POST   /v1/snapshots       {"image": PATH, "name": NAME}  → publish (pools that accept it)
//	GET    /v1/snapshots, DELETE /v1/snapshots/{name}
//	GET    /metrics                                 → Prometheus metrics
//
// A restore goes: PUT prepares the session (image metadata, hot and cold
// sources from the pool) and listens on a per-VM UFFD socket (0600) whose
// path the orchestrator passes to Firecracker's snapshot load as
// mem_backend.backend_path; Firecracker connects and sends its userfaultfd;
// the session pre-installs the hot set; the orchestrator waits on /ready and
// then resumes the VM (PATCH /vm {"state":"Resumed"}).
//
// Isolation: each VM has its own socket, session, goroutines and arena; a
// failing VM is marked failed and torn down without touching the others, and
// a VM is only ever served the pages of the snapshot it was prepared with
// (its socket admits one connection, from the uid the daemon runs as unless
// configured otherwise).
//
// Crash safety: the daemon keeps no state that a restart could get wrong.
// Catalog and placement live in the control plane, every page from a tier
// is digest-verified, and a VM whose pager died is not resumed again (its
// Firecracker must be discarded, as Firecracker documents).
//
// This package owns VM lifecycle, the control API and metrics. It must not
// implement paging policy (package pager) or tiers (package pool and below).
package pagerd
