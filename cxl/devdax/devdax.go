package devdax

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/aquifer-pool/aquifer/cxl"
	"github.com/aquifer-pool/aquifer/offheap"
	"golang.org/x/sys/unix"
)

// SysfsRoot is where device-DAX attributes live.
var SysfsRoot = "/sys/bus/dax/devices"

// Devices lists the /dev/dax* character devices present.
func Devices() []string {
	m, _ := filepath.Glob("/dev/dax*")
	return m
}

func readAttr(dev, attr string) (int64, error) {
	name := filepath.Base(dev)
	p := filepath.Join(SysfsRoot, name, attr)
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 0, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", p, err)
	}
	return v, nil
}

// Info returns the device's size and alignment from sysfs.
func Info(dev string) (size, align int64, err error) {
	if size, err = readAttr(dev, "size"); err != nil {
		return 0, 0, err
	}
	if align, err = readAttr(dev, "align"); err != nil {
		// Kernels before 5.10 have no align attribute; 2 MiB is the
		// default there.
		align = 2 << 20
	}
	if size <= 0 || align <= 0 || size%align != 0 {
		return 0, 0, fmt.Errorf("%s has size %d and align %d", dev, size, align)
	}
	return size, align, nil
}

// Open maps the whole device MAP_SHARED, read-only except windows, which
// must be multiples of the device alignment.
func Open(dev string, windows []cxl.Window) (*cxl.Mapped, error) {
	size, align, err := Info(dev)
	if err != nil {
		return nil, err
	}
	for _, w := range windows {
		if w.Off%align != 0 || w.Len%align != 0 || w.Off < 0 || w.Off+w.Len > size {
			return nil, fmt.Errorf("window [%d, +%d) is not %d-aligned inside %d bytes", w.Off, w.Len, align, size)
		}
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m, err := offheap.File(f, 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", dev, err)
	}
	for _, w := range windows {
		if w.Len == 0 {
			continue
		}
		if err := unix.Mprotect(m.B[w.Off:w.Off+w.Len], unix.PROT_READ|unix.PROT_WRITE); err != nil {
			m.Unmap()
			return nil, fmt.Errorf("mprotect [%d, +%d): %w", w.Off, w.Len, err)
		}
	}
	return cxl.NewMapped(m.B, align, windows, m.Unmap), nil
}
