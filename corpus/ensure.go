package corpus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// QEMULock takes the cache's QEMU lock: Capture holds it exclusively while
// it traces (its page-set checks assume a guest not slowed down further by
// other QEMU guests of ours; timer work grows with the guest's slowness),
// and tests that run real guests hold it shared, so they never overlap a
// capture. Do not take it around a call that may capture.
func QEMULock(cache string, shared bool) (unlock func(), err error) {
	return flockFile(filepath.Join(cache, ".qemu.lock"), shared)
}

func flockFile(path string, shared bool) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("corpus: locking %s: %w", path, err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// EnsureRestorable opens workload name in the corpus directory dir,
// capturing it first (into dir) when it is missing or was captured without
// device state. Concurrent callers (two test packages, two commands) wait
// for one capture instead of racing. Progress notes go to log.
func EnsureRestorable(ctx context.Context, log io.Writer, dir, name string) (*Workload, error) {
	w, err := OpenWorkload(filepath.Join(dir, name))
	if err == nil && w.Restorable() == nil {
		return w, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := flockFile(filepath.Join(dir, ".capture-"+name+".lock"), false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Another caller may have captured it while we waited.
	w, err = OpenWorkload(filepath.Join(dir, name))
	if err == nil && w.Restorable() == nil {
		return w, nil
	}
	why := "it is not in " + dir
	if err == nil {
		why = w.Restorable().Error()
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if _, err := Lookup(name); err != nil {
		return nil, fmt.Errorf("corpus: %s: %s, and the pipeline cannot capture it: %w", name, why, err)
	}
	if err := CheckHost(); err != nil {
		return nil, fmt.Errorf("corpus: cannot capture %s (%s): %w", name, why, err)
	}
	fmt.Fprintf(log, "corpus: capturing %s first (%s)\n", name, why)
	if _, err := Capture(ctx, Options{Functions: []string{name}, Out: dir}); err != nil {
		return nil, err
	}
	if w, err = OpenWorkload(filepath.Join(dir, name)); err != nil {
		return nil, err
	}
	return w, w.Restorable()
}
