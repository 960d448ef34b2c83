// Package ncsim is a deterministic simulator of memory shared by several
// hosts WITHOUT cache coherence, for testing the CXL coherence protocol on
// machines whose caches are coherent.
//
// Each simulated host gets a [cxl.Region] view with a private write-back
// cache of 64-byte lines over one shared byte array (the device):
//
//   - loads fill the host's cache and are then served from it, however stale;
//   - stores dirty a cached line (write-allocate); the device sees the line
//     only when it is written back;
//   - Flush (CLWB) and Invalidate (CLFLUSHOPT) only mark lines pending; a
//     pending operation completes at a random later moment or at the host's
//     next fence, whichever comes first;
//   - between any two operations the hardware may evict a line (dirty lines
//     preferred, written back whole: a line written by two hosts loses one
//     host's bytes), prefetch lines near recent accesses, or complete
//     pending operations;
//   - Crash drops a host's dirty lines and pending write-backs.
//
// Hosts are logical threads run one at a time by an adversarial scheduler
// that switches hosts at every operation with random bursts (modelling
// preemption: a host may be stopped for a long time between two steps).
// Everything is driven by one seed, so a failing seed replays exactly.
//
// This package owns only simulation; it knows nothing of the pool layout and
// must never be used outside tests and tools.
package ncsim
