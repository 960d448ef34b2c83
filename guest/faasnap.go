package guest

import (
	"encoding/json"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// FaaSnapPlan is how FaaSnap maps a snapshot's memory: zero regions stay
// anonymous, non-zero regions are private mappings of the memory file, and
// the loading set (the working set minus zero pages, in first-touch order)
// is mapped from its own compact file on top. Page numbers are memory-file
// page indices.
type FaaSnapPlan struct {
	PageSize uint64 `json:"page_size"`
	MemSize  uint64 `json:"mem_size"`
	// LoadingSet is the loading-set file.
	LoadingSet string `json:"loading_set"`
	// NonZero are [first page, pages] runs mapped from the memory file.
	NonZero [][2]uint64 `json:"nonzero"`
	// LS are [guest page, loading-set page, pages] runs mapped from the
	// loading-set file.
	LS [][3]uint64 `json:"ls"`
}

// ReadFaaSnapPlan loads a plan written by baseline.BuildFaaSnap.
func ReadFaaSnapPlan(path string) (*FaaSnapPlan, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var p FaaSnapPlan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("FaaSnap plan %s: %w", path, err)
	}
	return &p, nil
}

// restoreFaaSnap maps memory per the plan and starts FaaSnap's concurrent
// paging of the loading set into the page cache.
func (v *vm) restoreFaaSnap(layout []Region) error {
	p := v.cfg.FaaSnap
	if p == nil {
		return fmt.Errorf("faasnap backend needs a plan")
	}
	if p.PageSize != v.ps {
		return fmt.Errorf("FaaSnap plan page size %d, guest %d", p.PageSize, v.ps)
	}
	mem, err := os.Open(v.cfg.MemPath)
	if err != nil {
		return err
	}
	defer mem.Close()
	ls, err := os.Open(p.LoadingSet)
	if err != nil {
		return err
	}
	defer ls.Close()
	pager, err := os.Open(p.LoadingSet)
	if err != nil {
		return err
	}
	if v.cfg.DropCache {
		for _, f := range []*os.File{mem, ls} {
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
	}
	// Concurrent paging starts with the restore (FaaSnap reads the loading
	// set into the page cache while the VMM loads and resumes).
	v.bgDone = make(chan struct{})
	go func() {
		defer close(v.bgDone)
		defer pager.Close()
		buf := make([]byte, 1<<20)
		for off := int64(0); ; off += int64(len(buf)) {
			n, err := pager.ReadAt(buf, off)
			if n == 0 || err != nil {
				return
			}
		}
	}()
	for _, r := range layout {
		m, err := mapAnon(r.Size, v.gps)
		if err != nil {
			return err
		}
		v.regions = append(v.regions, &mapped{Region: r, m: m, addr: m.Addr()})
	}
	mapFile := func(f *os.File, firstPage, pages, fileOff uint64) error {
		for pages > 0 {
			// Stop at the end of the region that holds firstPage.
			addr, room, ok := v.at(firstPage * v.ps)
			if !ok {
				return fmt.Errorf("FaaSnap plan page %d outside guest memory", firstPage)
			}
			n := min(pages, room/v.ps)
			_, _, errno := unix.Syscall6(unix.SYS_MMAP, addr, uintptr(n*v.ps), unix.PROT_READ|unix.PROT_WRITE,
				unix.MAP_PRIVATE|unix.MAP_FIXED|unix.MAP_NORESERVE, f.Fd(), uintptr(fileOff))
			if errno != 0 {
				return fmt.Errorf("FaaSnap mmap of %d pages at page %d: %w", n, firstPage, errno)
			}
			firstPage, pages, fileOff = firstPage+n, pages-n, fileOff+n*v.ps
		}
		return nil
	}
	for _, nz := range p.NonZero {
		if err := mapFile(mem, nz[0], nz[1], nz[0]*v.ps); err != nil {
			return err
		}
	}
	for _, l := range p.LS {
		if err := mapFile(ls, l[0], l[2], l[1]*v.ps); err != nil {
			return err
		}
	}
	return nil
}
