// Package api is the wire contract of the pager daemon's control API
// (`aquifer serve`): HTTP/1.1 with JSON bodies on a Unix socket (mode 0600;
// only the daemon's uid and root are answered), versioned under /v1.
//
//	PUT    /v1/vms/{id}          PrepareRequest          → 201 VM (its uffd_socket for Firecracker)
//	GET    /v1/vms/{id}                                  → 200 VM
//	GET    /v1/vms/{id}/ready?timeout=30s                → 200 VM once its hot set is installed; 504 on timeout
//	DELETE /v1/vms/{id}                                  → 204
//	GET    /v1/vms                                       → 200 [VM]
//	POST   /v1/snapshots         PublishRequest          → 201 Snapshot  (pools that publish)
//	GET    /v1/snapshots                                 → 200 [Snapshot]
//	DELETE /v1/snapshots/{name}                          → 204
//	POST   /v1/snapshots/{name}/promote                  → 204: hot set into this pod's CXL region now
//	POST   /v1/snapshots/{name}/demote                   → 204: hot set out of it (served from the RDMA copy)
//	POST   /v1/memnodes/{addr}/drain                     → 204 once no segment is left on that memory node
//	GET    /metrics                                      → Prometheus text
//
// A VM's socket admits one peer, checked with SO_PEERCRED before anything
// is read from it: the VMM of PrepareRequest.VMMUID ("vmm_uid"; default
// the daemon's --vmm-uid, else its own uid) and, if given,
// PrepareRequest.VMMPID ("vmm_pid"). Another process that connects first
// is refused and counted (aquifer_uffd_refused_peers_total) and the socket
// keeps waiting for the real VMM. When vmm_uid is not the daemon's uid the
// socket is made that uid's (mode 0600), so only it and root can connect.
//
// Errors are an Error body with a status: 400 bad input (including a file
// that is not an Aquifer image, or a truncated or corrupt one), 404 unknown
// VM or snapshot, 409 a name in use, 503 when the control plane or a tier
// cannot be reached (retry later), 504 when a wait timed out. A restore
// goes: PUT prepares the VM and returns the socket to give Firecracker as
// mem_backend.backend_path; Firecracker loads the snapshot (resume_vm
// false) and connects; the daemon pre-installs the hot set; /ready returns;
// the orchestrator resumes the VM.
//
// The types here are the wire format and nothing else: no channels, no
// internal structs. Package api/client is a client that imports only this
// package (it never links the daemon or etcd).
//
// This package must not import any other Aquifer package.
package api
