package shm

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/aquifer-pool/aquifer/cxl"
	"github.com/aquifer-pool/aquifer/offheap"
	"golang.org/x/sys/unix"
)

// PageSize is the mapping and protection granularity of a tmpfs file.
const PageSize = 4096

// Model approximates a CXL device's read cost on top of local DRAM. Every
// ReadAt spins for Latency plus len/Bandwidth. Defaults (DefaultModel) come
// from published figures for a direct-attached CXL 2.0 expander: 170-250 ns
// load-to-use latency (2-5x local DRAM; arXiv 2405.14209), and a x8 PCIe 5.0
// link's ~32 GB/s raw per direction, of which ~25 GB/s is a realistic read
// throughput (our inference). Pooled/switched devices are slower (Samsung
// CMM-B 596 ns, SK hynix Niagara 2.0 790 ns): set Latency accordingly.
type Model struct {
	Latency   time.Duration
	Bandwidth float64 // bytes per second; 0 = unlimited
}

// DefaultModel returns the direct-attach figures above (250 ns, 25 GB/s).
func DefaultModel() *Model { return &Model{Latency: 250 * time.Nanosecond, Bandwidth: 25e9} }

func (m *Model) delay(n int) {
	d := m.Latency
	if m.Bandwidth > 0 {
		d += time.Duration(float64(n) / m.Bandwidth * 1e9)
	}
	if d <= 0 {
		return
	}
	// Spin: sleeping has ~50 µs granularity, far above the modelled cost.
	for start := time.Now(); time.Since(start) < d; {
	}
}

// Region is a shared mapping of a tmpfs file or memfd.
type Region struct {
	*cxl.Mapped
	model *Model
}

// ReadAt copies through the cache, adding the model's delay if any.
func (r *Region) ReadAt(dst []byte, off int64) {
	if r.model != nil {
		r.model.delay(len(dst))
	}
	r.Mapped.ReadAt(dst, off)
}

// Create makes a new zero-filled pod file of size bytes at path (normally
// under /dev/shm). It fails if the file exists, so an existing pool is never
// truncated by accident.
func Create(path string, size int64) error {
	if size <= 0 || size%PageSize != 0 {
		return fmt.Errorf("size %d is not a positive multiple of %d", size, PageSize)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating the pod file: %w", err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		if err2 := f.Truncate(size); err2 != nil {
			os.Remove(path)
			return fmt.Errorf("sizing pod file %s to %d bytes: %w", path, size, err2)
		}
	}
	return nil
}

// TempPath returns a fresh path under /dev/shm (or os.TempDir if /dev/shm
// is absent) for a pod file named after prefix.
func TempPath(prefix string) string {
	dir := "/dev/shm"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		dir = os.TempDir()
	}
	return filepath.Join(dir, fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), time.Now().UnixNano()))
}

// Open maps the whole file at path MAP_SHARED, read-only except windows
// (which must be page-aligned). A nil windows slice maps everything
// read-only; use All for a formatter.
func Open(path string, windows []cxl.Window, model *Model) (*Region, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the pod file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return mapFd(int(f.Fd()), path, st.Size(), windows, model)
}

// OpenFd maps size bytes of an already open file descriptor (a memfd
// inherited by a child process, for example). The fd may be closed after.
func OpenFd(fd int, size int64, windows []cxl.Window, model *Model) (*Region, error) {
	return mapFd(fd, fmt.Sprintf("fd %d", fd), size, windows, model)
}

// Memfd creates an anonymous shared-memory file of size bytes and returns
// its descriptor (without O_CLOEXEC, so exec'd children can inherit it).
func Memfd(name string, size int64) (int, error) {
	fd, err := unix.MemfdCreate(name, 0)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("sizing the memfd: %w", err)
	}
	return fd, nil
}

// All is the window list that makes a whole region of size bytes writable.
func All(size int64) []cxl.Window { return []cxl.Window{{Off: 0, Len: size}} }

func mapFd(fd int, name string, size int64, windows []cxl.Window, model *Model) (*Region, error) {
	if size <= 0 || size%PageSize != 0 {
		return nil, fmt.Errorf("%s has size %d, not a positive multiple of %d", name, size, PageSize)
	}
	for _, w := range windows {
		if w.Off%PageSize != 0 || w.Len%PageSize != 0 || w.Off < 0 || w.Len < 0 || w.Off+w.Len > size {
			return nil, fmt.Errorf("writable window [%d, +%d) is not page-aligned inside %d bytes", w.Off, w.Len, size)
		}
	}
	b, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", name, err)
	}
	m := &offheap.Mapping{B: b}
	for _, w := range windows {
		if w.Len == 0 {
			continue
		}
		if err := unix.Mprotect(b[w.Off:w.Off+w.Len], unix.PROT_READ|unix.PROT_WRITE); err != nil {
			m.Unmap()
			return nil, fmt.Errorf("mprotect window [%d, +%d): %w", w.Off, w.Len, err)
		}
	}
	return &Region{Mapped: cxl.NewMapped(b, PageSize, windows, m.Unmap), model: model}, nil
}
