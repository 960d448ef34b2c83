package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// bin is the aquifer binary built once for the package's tests.
var bin string

func TestMain(m *testing.M) {
	if spec := os.Getenv(fcDoubleEnv); spec != "" {
		fcDoubleMain(spec)
	}
	dir, err := os.MkdirTemp("", "aquifer-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "aquifer")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/aquifer-pool/aquifer/cmd/aquifer")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building aquifer:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
