package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// DirPod runs a pager daemon (aquifer serve --images) over a directory of
// images on this host: the aquifer strategies without shared tiers.
type DirPod struct {
	dir, api string
	nice     int
	cmd      *exec.Cmd
}

// StartDirPod starts the daemon, at nice value nice (Options.ServerNice).
func StartDirPod(ctx context.Context, bin, dir string, nice int) (*DirPod, error) {
	p := &DirPod{dir: filepath.Join(dir, "images"), api: filepath.Join(dir, "api.sock"), nice: nice}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return nil, err
	}
	args := append([]string{"serve", "--images", p.dir, "--api", p.api,
		"--socket-dir", filepath.Join(dir, "vms"), "--log-level", "warn"}, niceArgs(nice)...)
	p.cmd = exec.CommandContext(ctx, bin, args...)
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitSocket(ctx, p.api); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Publish implements Pod.
func (p *DirPod) Publish(ctx context.Context, image, name string) error {
	dst := filepath.Join(p.dir, name+".img")
	os.Remove(dst)
	if err := os.Link(image, dst); err == nil {
		return nil
	}
	in, err := os.Open(image)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst + ".tmp")
	if err != nil {
		return err
	}
	defer os.Remove(dst + ".tmp")
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s: %w", image, err)
	}
	// Atomic and durable: fsync the copy, rename, fsync the directory.
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Rename(dst+".tmp", dst); err != nil {
		return err
	}
	d, err := os.Open(p.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// API implements Pod.
func (p *DirPod) API() string { return p.api }

// Kind implements Pod.
func (p *DirPod) Kind() string {
	return "local images (no tiers): hot and cold segments read from local files" + niceText(p.nice)
}

// Close implements Pod.
func (p *DirPod) Close() error {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(os.Interrupt)
		p.cmd.Wait()
	}
	return nil
}

// CPUTime implements CPUMeter.
func (p *DirPod) CPUTime() time.Duration {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return processCPU(p.cmd.Process.Pid)
}
