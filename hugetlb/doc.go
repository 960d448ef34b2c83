// Package hugetlb owns what Aquifer knows of the host's 2 MiB hugetlb pool:
// how many huge pages it holds and has free (sysfs), growing it for a
// caller that needs more (never shrinking it: other processes' guests use
// it too), warming pages before they are counted on (pages fresh from the
// pool, or long untouched, cost milliseconds on first use on virtualised
// hosts), the mmap flags of a 2 MiB hugetlb mapping as Firecracker makes it,
// and the error that tells an operator which sysctl to run.
//
// Firecracker backs a `huge_pages: "2M"` guest with anonymous
// MAP_HUGETLB|MAP_HUGE_2MB memory mapped MAP_NORESERVE: nothing is
// reserved when it maps guest memory, every huge page is taken from the
// pool when it is first installed (UFFDIO_COPY) or touched, and a pool
// that runs dry fails the VM. The pager daemon therefore checks the pool
// when it starts and when it prepares a 2 MiB restore.
//
// This package must not serve pages or know about images; it reads and
// writes only /sys/kernel/mm/hugepages/hugepages-2048kB.
package hugetlb
