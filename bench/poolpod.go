package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aquifer-pool/aquifer/api/client"
)

// PoolPod runs `aquifer serve --embedded`: an embedded etcd, an emulated
// CXL region (a /dev/shm file) and memory nodes read through the emulated
// RDMA transport (the documented latency model), with the pager daemon on
// top. Aquifer strategies publish into it and restore from it.
type PoolPod struct {
	dir, api, cxl string
	nice          int
	cmd           *exec.Cmd
	client        *client.Client
}

// StartPoolPod starts the pod in dir, its daemon at nice value nice
// (Options.ServerNice).
func StartPoolPod(ctx context.Context, bin, dir string, nice int) (*PoolPod, error) {
	p := &PoolPod{dir: dir, api: filepath.Join(dir, "api.sock"),
		cxl: fmt.Sprintf("/dev/shm/aquifer-bench-%d-cxl", os.Getpid()), nice: nice}
	os.Remove(p.cxl)
	args := append([]string{"serve", "--embedded", "--data-dir", filepath.Join(dir, "pod"),
		"--api", p.api, "--socket-dir", filepath.Join(dir, "vms"), "--cxl-path", p.cxl, "--cxl-size", "4GiB",
		"--cxl-chunk", "256MiB", "--rdma", "emu", "--log-level", "warn"}, niceArgs(nice)...)
	p.cmd = exec.CommandContext(ctx, bin, args...)
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitSocket(ctx, p.api); err != nil {
		p.Close()
		return nil, fmt.Errorf("embedded pod did not start: %w", err)
	}
	p.client = client.New(p.api, client.Options{})
	return p, nil
}

// Publish implements Pod.
func (p *PoolPod) Publish(ctx context.Context, image, name string) error {
	return publishTo(ctx, p.client, image, name)
}

// API implements Pod.
func (p *PoolPod) API() string { return p.api }

// Kind implements Pod.
func (p *PoolPod) Kind() string {
	return "embedded pod: emulated CXL (shared /dev/shm region, copies at local-DRAM speed) + emulated RDMA (3 memory nodes, R=2, latency model 2.5us + 100 Gb/s)" + niceText(p.nice)
}

// Close implements Pod.
func (p *PoolPod) Close() error {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(os.Interrupt)
		p.cmd.Wait()
	}
	os.Remove(p.cxl)
	return nil
}

// Replicas implements Tiered: the embedded pod keeps R=2 copies.
func (p *PoolPod) Replicas() int { return 2 }

// CPUTime implements CPUMeter: the daemon's (and its in-process memory
// nodes' and etcd's) CPU time so far.
func (p *PoolPod) CPUTime() time.Duration {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return processCPU(p.cmd.Process.Pid)
}

// niceArgs is the --nice flag of a page server's command line (none for 0,
// the priority it is started with).
func niceArgs(nice int) []string {
	if nice == 0 {
		return nil
	}
	return []string{"--nice", strconv.Itoa(nice)}
}

// niceText says at what priority a pod's daemon runs, for its Kind.
func niceText(nice int) string {
	if nice == 0 {
		return ""
	}
	return fmt.Sprintf("; its daemon at nice %d", nice)
}
