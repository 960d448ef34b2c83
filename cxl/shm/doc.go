// Package shm is the emulated CXL pod: a file on a tmpfs (normally
// /dev/shm) or a memfd, mapped MAP_SHARED by several processes, each acting
// as one host. It returns a [cxl.Region] whose flush, invalidate and fence
// primitives are the real instructions (so their cost is measured), but the
// memory is ordinary coherent DRAM: runs here cannot expose coherence bugs
// (package cxl/ncsim does that) and timings are labelled emulated.
//
// The mapping is PROT_READ except the writable windows the host asks for
// (its own host slot; the descriptor table and data area if it owns
// chunks), so a stray store faults instead of dirtying a line another host
// owns.
//
// An optional latency/bandwidth model (see [Model]) delays reads to
// approximate a CXL device. This package owns only the mapping; the pool
// layout is package cxl/pod.
package shm
