package cli

import (
	"os"
	"strings"
	"testing"

	"github.com/aquifer-pool/aquifer/cxl/shm"
)

// TestCXLCommands formats an emulated pod file and inspects it.
func TestCXLCommands(t *testing.T) {
	path := shm.TempPath("aquifer-cli-pod")
	defer os.Remove(path)
	out, err := runCLI(t, "cxl", "format", "--cxl", "shm:"+path, "--create", "--cxl-size", "16M", "--cxl-chunk", "1M", "--host-slots", "4")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "chunks of 1048576 bytes, 4 host slots") {
		t.Fatalf("format printed %q", out)
	}
	out, err = runCLI(t, "cxl", "info", "--cxl", "shm:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "descriptors: free ") || !strings.Contains(out, "torn 0") {
		t.Fatalf("info printed %q", out)
	}
	out, err = runCLI(t, "cxl", "prims")
	if err != nil || !strings.Contains(out, "flush=") {
		t.Fatalf("prims: %q, %v", out, err)
	}
	if _, err := runCLI(t, "cxl", "info", "--cxl", "shm:"+path+".missing"); err == nil {
		t.Fatal("info on a missing file succeeded")
	}
}
