package realvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

var faultsRE = regexp.MustCompile(`faults served (\d+)`)

// startHandle starts `aquifer handle` for firecracker-uffd (on-demand from
// the memory file) or reap (working set installed at the first fault) and
// returns once its socket exists. wait reaps it after QEMU has exited (it
// exits when the VM does) and reads the faults it served.
func startHandle(ctx context.Context, r *run, socket string) (func() (uint64, error), error) {
	if r.c.Bin == "" {
		return nil, errors.New("no aquifer binary for `aquifer handle`")
	}
	args := []string{"handle", "--socket", socket, "--mem", r.c.Workload.Mem, "--log-level", "warn", "--accept-timeout", "60s"}
	if r.c.Strategy == REAP {
		if r.c.REAPWS == "" {
			return nil, errors.New("reap needs a working-set file (baseline.BuildREAP)")
		}
		args = append(args, "--reap-ws", r.c.REAPWS)
		r.dropCache(r.c.REAPWS)
	}
	r.dropCache(r.c.Workload.Mem)
	cmd := exec.Command(r.c.Bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	var werr error
	go func() { werr = cmd.Wait(); close(done) }()
	r.cleanups = append(r.cleanups, func() {
		cmd.Process.Kill() // no-op once it exited
		<-done
	})
	if err := waitSocket(ctx, socket, done); err != nil {
		return nil, fmt.Errorf("aquifer handle: %w: %s", err, errb.String())
	}
	return func() (uint64, error) {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			return 0, errors.New("aquifer handle did not exit after the VM")
		}
		var n uint64
		if m := faultsRE.FindStringSubmatch(out.String()); m != nil {
			n, _ = strconv.ParseUint(m[1], 10, 64)
		}
		if werr != nil {
			return n, fmt.Errorf("aquifer handle: %v: %s", werr, lastLine(errb.String()))
		}
		return n, nil
	}, nil
}

func lastLine(s string) string {
	b := bytes.TrimSpace([]byte(s))
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return string(b)
}

// waitSocket waits until path is a socket, the process exits, or 20 s.
func waitSocket(ctx context.Context, path string, exited <-chan struct{}) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited before listening")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return fmt.Errorf("socket %s did not appear", path)
}
