// Package bench is `aquifer bench`: end-to-end restore + invocation time of
// every strategy on the same corpus, side by side in one run.
//
// Strategies (docs/evaluation.md says what each original does and where
// ours differs):
//
//	firecracker        File backend: MAP_PRIVATE of the memory file on local disk, page cache dropped
//	firecracker-uffd   Firecracker's on-demand UFFD example handler (aquifer handle), one process per VM
//	reap               REAP as vHive implements it (baseline.REAPSource), one handler process per VM
//	faasnap            FaaSnap's loading set and per-region mapping (guest faasnap backend)
//	aquifer            the pager daemon with the pool: hot set pre-installed, cold pages demand-paged
//	aquifer-early      the same, resumed before the hot set is complete (it streams in; beyond the paper)
//	aquifer-cxl-only   every non-zero page in the hot (CXL) segment
//	aquifer-rdma-only  nothing pre-installed: every non-zero page demand-paged from the cold tier
//	warm               memory already resident (prefaulted private mapping): the lower bound
//
// Every VM is a separate `aquifer guest run` process that restores exactly
// as Firecracker does and verifies every touched byte; the serving side runs
// as separate processes too. Runs of different strategies are interleaved
// (each round runs every strategy once, in a rotating order) so machine
// noise hits them alike. Results report p50/p99 of end-to-end time with the
// breakdown, speedups of aquifer over each strategy (T(strategy) /
// T(aquifer)) and their geometric means per concurrency level.
//
// This package measures; it must not contain serving logic.
package bench
