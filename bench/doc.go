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
//	warm               memory already resident (prefaulted private mapping)
//	no-restore         the floor: memory resident and every traced page touched, no fault at all
//
// The disk-based strategies (firecracker, firecracker-uffd, reap, faasnap)
// run once per storage (Options.Storages, reported as strategy@storage):
// nvme and network are device models (package diskemu, served through
// FUSE by their own process), host is this machine's disk as it is, dram
// keeps the files in tmpfs (what an operator who spends host DRAM on
// snapshots does).
//
// Every VM is a separate `aquifer guest run` process that restores exactly
// as Firecracker does and verifies every touched byte; the serving side runs
// as separate processes too. Runs of different strategies are interleaved
// (each round runs every strategy once, in a rotating order) so machine
// noise hits them alike; the VMs of one batch verify their whole memory
// only once every one of them is past its measured run (gate.go), so no
// VM's verification runs on another's clock. Results report p50/p99 of end-to-end time, every
// p50, speedup and geometric mean with a 95% bootstrap interval over rounds
// and VMs (stats.go; generic over samples, whoever produced them), the
// outliers, the machine's own noise from fixed calibration loops run
// between batches, per restore a breakdown by page class (breakdown.go),
// and the memory every strategy holds per snapshot and per VM (memory.go).
//
// This package measures; it must not contain serving logic.
package bench
