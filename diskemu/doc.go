// Package diskemu is the storage device model for the disk-based restore
// strategies (Firecracker's File backend, its UFFD example handler, REAP,
// FaaSnap): their files — the memory file, REAP's working-set file,
// FaaSnap's loading set — are served through a FUSE filesystem whose every
// READ request waits as long as the modelled device would take for it.
//
// Why FUSE: the strategies under test read their files through the page
// cache, with the kernel's readahead, mostly by faulting on MAP_PRIVATE
// mappings. A FUSE filesystem keeps exactly that path (filemap faults,
// read-around on mmap faults, async readahead for read(2), page-cache
// sharing between the VMs of one host) and only replaces the block device
// underneath. The filesystem therefore opens files with FOPEN_KEEP_CACHE
// (the page cache survives opens, as on ext4; without it every open by a
// new VM would invalidate the pages another VM is faulting in), never with
// FOPEN_DIRECT_IO (which bypasses the page cache and changes mmap), and
// sets the FUSE backing device's read_ahead_kb to the modelled device's
// (128 KiB, the Linux default for NVMe and EBS NVMe volumes) with requests
// of up to 128 KiB. The benchmark drops the page cache before every cold
// batch, as it does on the host disk.
//
// The device (Model): every request is admitted no earlier than the IOPS
// limit allows, becomes ready Latency later (flash or network latency,
// overlapping between requests), and then transfers its bytes over a
// channel of Bandwidth shared by all requests. Completion times are thus
// non-decreasing in arrival order, so one goroutine completes requests in
// FIFO order: it spins for the last stretch (nanosleep overshoots by
// 70–120 µs on these machines) and sleeps only when a deadline is far.
// The FUSE round trip itself costs time; Mount measures it with the model
// off and injects Latency minus that overhead, and Probe measures what a
// 4 KiB and a 128 KiB read then really take (reported next to the claim).
// The spinning uses host CPU a real device would not use: reports say so.
//
// This package owns the model and the filesystem. It must not know the
// strategies or the benchmark (package bench decides which files go where).
package diskemu
