// Package guest is Aquifer's Firecracker-faithful guest emulator. These
// machines cannot run Firecracker (no VT-x, no binary), so the emulator
// restores a "VM" the way Firecracker does and then lets vCPU threads touch
// guest memory as a replayed workload would.
//
// Restore, Uffd backend (Firecracker's guest_memory_from_uffd): each region
// is an anonymous MAP_PRIVATE|MAP_NORESERVE mapping laid out like
// Firecracker's x86_64 map (region 0 up to the MMIO gap, region 1 after it;
// the gap start is scalable so small test VMs get two regions); a userfaultfd
// with O_CLOEXEC|O_NONBLOCK (through /dev/userfaultfd as Firecracker >= 1.5
// does, the syscall for the 1.1–1.6 dialect); UFFDIO_API with EVENT_REMOVE;
// MISSING registration of every region; one sendmsg of the region JSON in the
// chosen dialect plus the fd; the socket closed at once before 1.12 and kept
// open until exit from 1.12 on.
//
// Restore, File backend: every region is a MAP_PRIVATE mapping of the memory
// file at its offset (what stock Firecracker does without mem_backend),
// optionally after dropping the file's page cache (a cold restore).
//
// 2 MiB guests (Config.PageSize, `--page-size 2MiB`): guest memory is
// hugetlb (MAP_HUGETLB|MAP_HUGE_2MB, as Firecracker maps huge_pages "2M"),
// the handshake carries a 2 MiB page size, only the Uffd backend (and the
// warm lower bound) exists, and every 2 MiB page the trace touched is
// compared whole after the replay; see huge.go, also for what the balloon
// discards on hugetlb memory.
//
// Balloon: at the trace's midpoint all vCPUs stop at a barrier and a range is
// discarded the way Firecracker discards balloon pages: MADV_DONTNEED on
// anonymous (Uffd) memory, an anonymous MAP_FIXED remap on file-backed
// memory. Afterwards that range must read as zeros.
//
// Replay: vCPU goroutines on locked OS threads walk their share of a
// wset.Trace, spin for the recorded think time, load or store real bytes of
// guest memory (so faults are genuine user-mode faults on those threads),
// and verify the whole touched page byte for byte against the snapshot (and
// against their own earlier writes). The report gives restore time, time to
// first touch and end-to-end time.
//
// This package must not serve pages: the handler or pager on the other end
// of the socket does, in another process.
package guest
