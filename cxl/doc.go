// Package cxl owns the hardware-facing layer of Aquifer's pod-local CXL tier:
// the Region abstraction through which every byte of pod-shared memory is
// reached, CPUID detection of the cache-maintenance instructions, and the
// flush / invalidate / fence primitives written in Go assembly.
//
// # Why an interface
//
// A CXL 2.0 multi-headed device shares memory between hosts without cache
// coherence: a host may keep reading stale lines from its own cache, and a
// dirty line may reach the device at any moment (eviction) or never (crash).
// Correct sharing therefore depends on the exact order of stores, write-backs,
// invalidations and fences, and that order must be testable on machines whose
// caches are coherent. All shared-memory access goes through [Region], whose
// operations are exactly the ones the hardware offers:
//
//   - ReadAt / WriteAt / Load64 / Store64: ordinary cached loads and stores;
//   - Flush: write dirty lines back (CLWB, else CLFLUSHOPT, else CLFLUSH),
//     asynchronously until the next fence;
//   - Invalidate: drop lines from this host's cache (CLFLUSHOPT, else CLFLUSH)
//     so the next load goes to the device, asynchronously until a full fence;
//   - Fence (SFENCE): orders earlier flushes before later stores;
//   - FullFence (MFENCE): orders earlier flushes and invalidations before
//     later loads and stores.
//
// Three implementations exist: [Mapped] (this package) over real mmap'd memory,
// used by package cxl/devdax (a /dev/daxX.Y device) and package cxl/shm (a
// MAP_SHARED file mapped by several processes: the emulated pod), and the
// non-coherent cache simulator in package cxl/ncsim, used by tests.
//
// # What this package must not do
//
// It holds no pool layout and no protocol (that is package cxl/pod), never
// allocates shared memory on the Go heap (mappings come from package offheap or
// the backends), and never uses locked read-modify-write instructions on
// region memory: LOCK-prefixed operations are atomic only inside one coherence
// domain, so they would silently be wrong across hosts.
package cxl
