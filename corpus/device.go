package corpus

import (
	"errors"
	"hash/maphash"
	"io"
	"os"
	"sort"

	"github.com/aquifer-pool/aquifer/wset"
)

// The TCG plugin sees what the vCPU does, not what devices do: a virtio-blk
// read fills page-cache pages by DMA. In Firecracker the same DMA is a write
// by the VMM into guest memory, which faults through userfaultfd like any
// other first touch, so a faithful trace must contain those pages too.
//
// A page that changed during the invocation but that the vCPU never wrote
// can only have been written by a device. The only device that writes guest
// RAM in these guests is the read-only root disk, so such a page must be a
// copy of a 4 KiB block of the root filesystem image (made with -b 4096).
// diskIndex proves that page by page; a changed page that is neither
// CPU-written nor a disk block is reported as unexplained and fails the
// capture's check.

// diskIndex is the set of content hashes of every 4 KiB block of an image.
type diskIndex struct {
	seed maphash.Seed
	set  map[uint64]struct{}
}

func newDiskIndex(path string) (*diskIndex, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d := &diskIndex{seed: maphash.MakeSeed(), set: make(map[uint64]struct{}, 1<<16)}
	buf := make([]byte, 1<<20)
	for {
		n, err := io.ReadFull(f, buf)
		for p := 0; p+pageSize <= n; p += pageSize {
			d.set[maphash.Bytes(d.seed, buf[p:p+pageSize])] = struct{}{}
		}
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			return d, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func (d *diskIndex) has(page []byte) bool {
	_, ok := d.set[maphash.Bytes(d.seed, page)]
	return ok
}

// deviceWrites classifies the changed pages the vCPU did not write: those
// equal to a disk block (device writes) and the rest (unexplained).
func deviceWrites(img string, changed []uint64, cpuWritten map[uint64]bool, disk *diskIndex) (dev, unexplained []uint64, err error) {
	f, err := os.Open(img)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	buf := make([]byte, pageSize)
	for _, p := range changed {
		if cpuWritten[p] {
			continue
		}
		if _, err := f.ReadAt(buf, int64(p)*pageSize); err != nil {
			return nil, nil, err
		}
		if disk.has(buf) {
			dev = append(dev, p)
		} else {
			unexplained = append(unexplained, p)
		}
	}
	return dev, unexplained, nil
}

// addDeviceWrites inserts device-written pages into a trace as writes. A
// device write happens before the vCPU's first touch of the page, so it is
// placed at that touch; a page the vCPU never touched (read-ahead) is placed
// with the first placed page of its contiguous run, else at the end.
func addDeviceWrites(t *wset.Trace, dev []uint64) {
	if len(dev) == 0 {
		return
	}
	first := map[uint64]int{}
	for i, a := range t.Accesses {
		if _, ok := first[a.Page]; !ok {
			first[a.Page] = i
		}
	}
	sort.Slice(dev, func(i, j int) bool { return dev[i] < dev[j] })
	type ins struct {
		at int // index in t.Accesses to insert before
		a  wset.Access
	}
	var out []ins
	end := len(t.Accesses)
	for i := 0; i < len(dev); {
		j := i
		for j+1 < len(dev) && dev[j+1] == dev[j]+1 {
			j++
		}
		runAt := end
		for k := i; k <= j; k++ {
			if at, ok := first[dev[k]]; ok && at < runAt {
				runAt = at
			}
		}
		for k := i; k <= j; k++ {
			at, ok := first[dev[k]]
			if !ok {
				at = runAt
			}
			out = append(out, ins{at: at, a: wset.Access{Page: dev[k], Kind: wset.Write}})
		}
		i = j + 1
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].at < out[j].at })
	merged := make([]wset.Access, 0, len(t.Accesses)+len(out))
	k := 0
	for i := 0; i <= len(t.Accesses); i++ {
		for k < len(out) && out[k].at == i {
			a := out[k].a
			switch {
			case i < len(t.Accesses):
				a.T, a.Insn = t.Accesses[i].T, t.Accesses[i].Insn
			case len(t.Accesses) > 0:
				last := t.Accesses[len(t.Accesses)-1]
				a.T, a.Insn = last.T, last.Insn
			}
			merged = append(merged, a)
			k++
		}
		if i < len(t.Accesses) {
			merged = append(merged, t.Accesses[i])
		}
	}
	t.Accesses = merged
}
