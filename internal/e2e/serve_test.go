package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/api/client"
)

// startServe runs `aquifer serve` with extra args and returns its API
// socket and a stop function.
func startServe(t *testing.T, ctx context.Context, dir string, args ...string) (string, func()) {
	t.Helper()
	apiSock := filepath.Join(dir, "api.sock")
	cmd := exec.CommandContext(ctx, bin, append([]string{"serve", "--api", apiSock, "--socket-dir", filepath.Join(dir, "vms"), "--log-level", "warn"}, args...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitSocket(t, apiSock)
	return apiSock, func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }
}

// TestServeConcurrent publishes an image to a directory pool and restores
// it through `aquifer serve` at concurrency 1 and 16, every byte verified,
// each VM resumed only after the daemon reported its hot set installed.
func TestServeConcurrent(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rec := record(t, ctx, f)
	images := filepath.Join(f.dir, "images")
	os.MkdirAll(images, 0o755)
	if out, err := exec.CommandContext(ctx, bin, "convert", "--mem", f.mem, "--ws", rec, "--out", filepath.Join(images, "fn.img"), "--hot-budget", "500").CombinedOutput(); err != nil {
		t.Fatalf("convert: %v\n%s", err, out)
	}
	sock, stop := startServe(t, ctx, f.dir, "--images", images)
	defer stop()
	for _, conc := range []int{1, 16} {
		t.Run(fmt.Sprint("c", conc), func(t *testing.T) {
			var wg sync.WaitGroup
			for i := 0; i < conc; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					rep := runGuest(t, ctx, "--mem", f.mem, "--trace", f.trace, "--pager-api", sock,
						"--vm", fmt.Sprintf("vm-%d-%d", conc, i), "--snapshot", "fn", "--vcpus", "2")
					if rep.Mismatches != 0 || rep.Verified == 0 {
						t.Errorf("vm %d: %+v", i, rep)
					}
				}(i)
			}
			wg.Wait()
		})
	}
	pc := client.New(sock, client.Options{})
	// The daemon counts a restore when it sees its VM exit, which may
	// trail the guest process's own exit on a loaded machine.
	var m string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if m, err = pc.Metrics(ctx); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(m, `aquifer_restores_total{outcome="ok"} 17`) || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range []string{`aquifer_restores_total{outcome="ok"} 17`, "aquifer_preinstall_bytes_total", `aquifer_faults_total{tier="cold"}`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// Every VM was resumed only after its hot set was installed: the
	// daemon's state says ready before exit, with a pre-install recorded.
	vm, err := pc.Get(ctx, "vm-1-0")
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != api.StateExited || vm.Report == nil || vm.Report.PreinstallPages == 0 || vm.ReadyNS == 0 {
		t.Fatalf("vm state %+v", vm)
	}
	// Unknown snapshots and bad names are refused clearly.
	if _, err := pc.Prepare(ctx, "x", api.PrepareRequest{Snapshot: "missing"}); !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown snapshot: %v", err)
	}
	if _, err := pc.Prepare(ctx, "../x", api.PrepareRequest{Snapshot: "fn"}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("bad VM id: %v", err)
	}
	// The daemon serves image files: it has no catalog to publish to.
	if _, err := pc.Publish(ctx, f.mem, "y"); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("publish to an --images daemon: %v", err)
	}
}
