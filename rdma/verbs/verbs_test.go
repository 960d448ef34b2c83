package verbs

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/aquifer-pool/aquifer/rdma"
)

// TestDeviceless checks the path every machine without an RNIC takes: New
// fails with a plain explanation — ErrNoDevice when built with -tags rdma,
// ErrNotBuilt otherwise — and never panics or hangs.
func TestDeviceless(t *testing.T) {
	if ents, err := os.ReadDir("/sys/class/infiniband"); err == nil && len(ents) > 0 {
		t.Skipf("this machine has RDMA devices (%d in /sys/class/infiniband); the device-less path cannot be tested here", len(ents))
	}
	tr, err := New(Config{})
	if err == nil {
		tr.Close()
		t.Fatal("New succeeded without an RDMA device")
	}
	t.Logf("built=%v: %v", Built, err)
	if Built {
		if !errors.Is(err, rdma.ErrNoDevice) {
			t.Fatalf("want ErrNoDevice, got %v", err)
		}
		if !strings.Contains(err.Error(), "no RDMA-capable NIC") {
			t.Fatalf("error does not say plainly that there is no device: %v", err)
		}
		if _, derr := Devices(); derr == nil {
			// ibv_get_device_list may legitimately return an empty list
			t.Log("Devices: empty list")
		}
	} else if !errors.Is(err, ErrNotBuilt) || !strings.Contains(err.Error(), "-tags rdma") {
		t.Fatalf("stub build: want ErrNotBuilt naming the build tag, got %v", err)
	}
}
