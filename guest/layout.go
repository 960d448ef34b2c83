package guest

import "fmt"

// Firecracker's x86_64 MMIO gap starts at 3 GiB from 1.13 (3.25 GiB before).
const DefaultGapStart = 3 << 30

// Region is one guest memory region: its size and the offset of its content
// in the memory file. Guest physical addresses do not matter to the memory
// backends; only the host mapping and the file offset do.
type Region struct {
	GuestPhys  uint64
	Size       uint64
	FileOffset uint64
}

// FirecrackerLayout splits memSize bytes like Firecracker's x86_64 layout:
// region 0 from guest physical 0 up to gapStart, region 1 at 4 GiB (scaled:
// gapStart + the gap) holding the rest. gapStart 0 means DefaultGapStart.
func FirecrackerLayout(memSize, gapStart, pageSize uint64) ([]Region, error) {
	if gapStart == 0 {
		gapStart = DefaultGapStart
	}
	if memSize == 0 || memSize%pageSize != 0 {
		return nil, fmt.Errorf("memory size %d is not a non-zero multiple of the page size %d", memSize, pageSize)
	}
	if gapStart%pageSize != 0 {
		return nil, fmt.Errorf("gap start %d is not page aligned", gapStart)
	}
	if memSize <= gapStart {
		return []Region{{GuestPhys: 0, Size: memSize}}, nil
	}
	gap := uint64(1<<32) - DefaultGapStart
	if gapStart != DefaultGapStart {
		gap = gapStart / 3 // scaled MMIO gap
		gap = (gap + pageSize - 1) &^ (pageSize - 1)
	}
	return []Region{
		{GuestPhys: 0, Size: gapStart, FileOffset: 0},
		{GuestPhys: gapStart + gap, Size: memSize - gapStart, FileOffset: gapStart},
	}, nil
}
