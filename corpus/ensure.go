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
	lock, err := os.OpenFile(filepath.Join(dir, ".capture-"+name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	for {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("corpus: locking %s: %w", lock.Name(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
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
