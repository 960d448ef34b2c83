package hugetlb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// PageSize is the huge page size Aquifer serves (x86_64 PMD size).
const PageSize = 2 << 20

// Sysctl is the setting that sizes the pool of default-size (2 MiB) huge
// pages.
const Sysctl = "vm.nr_hugepages"

// MapFlags are the mmap flags of a 2 MiB hugetlb mapping, added to
// MAP_PRIVATE|MAP_ANONYMOUS (Firecracker adds MAP_NORESERVE).
const MapFlags = unix.MAP_HUGETLB | 21<<unix.MAP_HUGE_SHIFT

// dir is the sysfs directory of the 2 MiB pool (a variable for tests).
var dir = "/sys/kernel/mm/hugepages/hugepages-2048kB"

// Pool is the state of the 2 MiB pool.
type Pool struct {
	// Total is nr_hugepages: pages the pool holds.
	Total int `json:"total"`
	// Free pages are not mapped by anyone.
	Free int `json:"free"`
	// Reserved pages are free but promised to mappings made without
	// MAP_NORESERVE.
	Reserved int `json:"reserved"`
	// Surplus pages were allocated beyond Total (overcommit).
	Surplus int `json:"surplus"`
}

// Available is what a new MAP_NORESERVE mapping can take: free pages not
// promised to anyone.
func (p Pool) Available() int { return p.Free - p.Reserved }

func (p Pool) String() string {
	return fmt.Sprintf("%d of %d 2 MiB huge pages free (%d reserved), %s = %d", p.Free, p.Total, p.Reserved, Sysctl, p.Total)
}

func readInt(name string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Status reads the pool's counters.
func Status() (Pool, error) {
	var p Pool
	for _, f := range []struct {
		name string
		v    *int
	}{{"nr_hugepages", &p.Total}, {"free_hugepages", &p.Free}, {"resv_hugepages", &p.Reserved}, {"surplus_hugepages", &p.Surplus}} {
		n, err := readInt(f.name)
		if err != nil {
			return p, fmt.Errorf("this kernel has no 2 MiB hugetlb pool (%v)", err)
		}
		*f.v = n
	}
	return p, nil
}

// ShortError says the pool has fewer available huge pages than needed, and
// how to reserve more.
type ShortError struct {
	Need int
	Pool Pool
	// Why adds detail ("the kernel allocated only 12 of 40").
	Why string
}

// ErrShort is matched by every ShortError.
var ErrShort = errors.New("not enough free 2 MiB huge pages")

func (e *ShortError) Error() string {
	want := e.Pool.Total + e.Need - e.Pool.Available()
	s := fmt.Sprintf("%v: %d needed, the hugetlb pool has %d available (%v)", ErrShort, e.Need, e.Pool.Available(), e.Pool)
	if e.Why != "" {
		s += "; " + e.Why
	}
	return s + fmt.Sprintf("; reserve them with `sysctl -w %s=%d` (or `echo %d > /proc/sys/vm/nr_hugepages`), and in /etc/sysctl.d to keep it across reboots", Sysctl, want, want)
}

func (e *ShortError) Unwrap() error { return ErrShort }

// Check returns a *ShortError when fewer than n huge pages are available.
func Check(n int) error {
	p, err := Status()
	if err != nil {
		return err
	}
	if p.Available() < n {
		return &ShortError{Need: n, Pool: p}
	}
	return nil
}

// Grow raises nr_hugepages until n pages are available, never lowering it
// (Aquifer processes on one host serialise on a lock file, so two growing
// at once cannot undo each other). It needs root. The kernel may find
// fewer free 2 MiB blocks than asked (fragmentation): then the pool keeps
// what it got and a *ShortError says so.
func Grow(n int) (Pool, error) {
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "aquifer-hugetlb.lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return Pool{}, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return Pool{}, fmt.Errorf("lock: %w", err)
	}
	p, err := Status()
	if err != nil {
		return p, err
	}
	if p.Available() >= n {
		return p, nil
	}
	want := p.Total + n - p.Available()
	if err := os.WriteFile(filepath.Join(dir, "nr_hugepages"), []byte(strconv.Itoa(want)), 0); err != nil {
		return p, &ShortError{Need: n, Pool: p, Why: fmt.Sprintf("raising it failed: %v", err)}
	}
	q, err := Status()
	if err != nil {
		return q, err
	}
	if q.Available() < n {
		return q, &ShortError{Need: n, Pool: q, Why: fmt.Sprintf("the kernel allocated %d of the %d pages asked for", q.Total-p.Total, want-p.Total)}
	}
	return q, nil
}

// Warm takes n huge pages from the pool (reserving them, so it fails
// cleanly when there are fewer), writes to each so that the kernel zeroes
// and the host backs it, and gives them back: the pool's next allocations
// reuse these pages first. It returns the time it took.
func Warm(n int) (time.Duration, error) {
	if n <= 0 {
		return 0, nil
	}
	t0 := time.Now()
	b, err := unix.Mmap(-1, 0, n*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|MapFlags)
	if err != nil {
		if p, serr := Status(); serr == nil && errors.Is(err, unix.ENOMEM) {
			return 0, &ShortError{Need: n, Pool: p, Why: "warming them failed: " + err.Error()}
		}
		return 0, fmt.Errorf("mapping %d huge pages to warm them: %w", n, err)
	}
	for i := 0; i < n; i++ {
		b[i*PageSize] = 1
	}
	if err := unix.Munmap(b); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}
