package devdax

import (
	"github.com/aquifer-pool/aquifer/cxl"
	"os"
	"path/filepath"
	"testing"
)

// TestDevice maps the first /dev/dax* device, if any, and round-trips one
// line through flush and invalidate. It only runs where a device exists,
// and it writes only the last line of the device's last alignment unit,
// restoring it afterwards.
func TestDevice(t *testing.T) {
	devs := Devices()
	if len(devs) == 0 {
		t.Skip("no /dev/dax* device on this machine (CONFIG_DEV_DAX unset or no CXL/pmem memory in devdax mode); the devdax backend is only exercised on hardware")
	}
	dev := devs[0]
	size, align, err := Info(dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d bytes, align %d, primitives %s", dev, size, align, cxl.Detect())
	w, err := Open(dev, nil) // a read-only "other host"
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rw, err := Open(dev, []cxl.Window{{Off: size - align, Len: align}})
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	off := size - 64
	old := rw.Load64(off)
	rw.Store64(off, ^old)
	rw.Flush(off, 8)
	rw.Fence()
	w.Invalidate(off, 8)
	w.FullFence()
	if got := w.Load64(off); got != ^old {
		t.Fatalf("second mapping of %s read %#x, want %#x", dev, got, ^old)
	}
	rw.Store64(off, old)
	rw.Flush(off, 8)
	rw.Fence()
}

// TestInfoFromSysfs checks the sysfs parsing on a fake tree, so the
// alignment logic is covered here even without a device.
func TestInfoFromSysfs(t *testing.T) {
	dir := t.TempDir()
	old := SysfsRoot
	SysfsRoot = dir
	defer func() { SysfsRoot = old }()
	d := filepath.Join(dir, "dax0.0")
	os.MkdirAll(d, 0o755)
	os.WriteFile(filepath.Join(d, "size"), []byte("4294967296\n"), 0o644)
	os.WriteFile(filepath.Join(d, "align"), []byte("2097152\n"), 0o644)
	size, align, err := Info("/dev/dax0.0")
	if err != nil || size != 4<<30 || align != 2<<20 {
		t.Fatalf("Info = %d, %d, %v", size, align, err)
	}
	os.WriteFile(filepath.Join(d, "size"), []byte("3000000\n"), 0o644)
	if _, _, err := Info("/dev/dax0.0"); err == nil {
		t.Fatal("size not a multiple of align accepted")
	}
	if _, err := Open("/dev/dax0.0", []cxl.Window{{Off: 4096, Len: 4096}}); err == nil {
		t.Fatal("unaligned window accepted")
	}
}
