// Package baseline reimplements the snapshot-restore systems Aquifer is
// measured against, on the same harness (the guest emulator) and the same
// corpus, as faithfully as these machines allow:
//
//   - REAP (vHive, ASPLOS'21): a recording run traces the faulted pages; the
//     working-set file holds their contents concatenated in offset order.
//     A later restore reads the whole WS file into memory before the load
//     (FetchState); the first page fault installs every WS page with
//     UFFDIO_COPY (DONTWAKE) and wakes the faulting vCPU; all other pages are
//     served on demand from the memory file. REAPSource implements the
//     serving side for package handler; BuildREAP writes the WS file.
//   - FaaSnap (EuroSys'22): the loading set is the recorded working set minus
//     zero pages, stored in first-touch ("layer") order; zero regions of the
//     snapshot stay anonymous memory, non-zero regions are mapped private from
//     the memory file, loading-set pages from the loading-set file on top,
//     and a goroutine reads the loading-set file into the page cache while
//     the VM starts. BuildFaaSnap writes the loading-set file and the mapping
//     plan that the guest emulator's "faasnap" backend applies.
//
// What differs from the originals is documented in docs/evaluation.md. This
// package prepares files and serves REAP faults; it must not measure (the
// bench package does) or know about Aquifer's tiers.
package baseline
