// Package embed is Aquifer's one setup root, in the spirit of etcd's
// server/embed: a Config says what a process runs, Start builds it from the
// concept packages, Stop takes it down. `aquifer serve`, `aquifer handle`,
// `aquifer pool init`, the benchmark's pods and the end-to-end tests all
// start through it, so there is one place where the pieces are wired:
//
//	Config ──Validate──► Start
//	                       ├─ control plane: embedded etcd member (DataDir, mutual TLS for other processes,
//	                       │  the daemon's own calls in-process: tls.go) or external endpoints (credentials)
//	                       ├─ memory nodes: in-process on loopback, or external `aquifer memnode`s (named, or
//	                       │  registered in the control plane; pod secret or mutual TLS: memsec.go)
//	                       ├─ RDMA transport: emu (latency model) | tcp | verbs (-tags rdma, an RNIC)
//	                       ├─ CXL region: shm:PATH (emulated) | devdax:/dev/daxX.Y | none
//	                       ├─ pod membership (cxl/pod over control's pod state) and reader identities
//	                       ├─ pool (publish / open) ── or restore.Dir for Images
//	                       └─ pager daemon (pagerd) and its control API socket
//
// Every choice is validated before anything starts, with errors that name
// the option (by its `aquifer serve` flag name) and say what to do; an
// option that does not apply to the chosen mode is refused, never ignored.
// A backend that this machine cannot provide (a devdax device that does not
// exist, verbs without an RDMA NIC or without the rdma build tag) is refused
// at once with the reason.
//
// RunMemNode is the same for `aquifer memnode` (memnode.go): the node, its
// TLS configuration, and with a control plane its own registration, usage
// reports and the catalog view it authorizes by.
//
// This package owns wiring and lifecycle only. It must not implement
// paging, tiers, the catalog or the API: those live in the packages it
// composes. Nothing below it imports it.
package embed
