package corpus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

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
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// EnsureRestorable opens workload name in the corpus directory dir,
// capturing it first (into dir) when it is missing, was captured without
// device state, or its guest is no longer built in the cache. A built-in
// function is captured by name; a function brought by the operator from the
// module its workload keeps (FunctionOf), so it must have been captured
// once (aquifer corpus capture --function-file). Concurrent callers (two
// test packages, two commands) wait for one capture instead of racing.
// Progress notes go to log.
func EnsureRestorable(ctx context.Context, log io.Writer, dir, name string) (*Workload, error) {
	w, why, err := restorable(dir, name)
	if err != nil || why == "" {
		return w, err
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
	if w, why, err = restorable(dir, name); err != nil || why == "" {
		return w, err
	}
	// Force: a guest built again is another disk (mkfs.ext4 gives it a new
	// UUID, which seeds its metadata checksums), so a snapshot taken with
	// the old one must not be reused even when the guest key matches.
	o := Options{Out: dir, Force: true}
	if w == nil {
		if _, err := Lookup(name); err != nil {
			return nil, fmt.Errorf("%s: %s, and it is not a built-in function (%s): capture your own with `aquifer corpus capture --function-file FILE.py --name %s`",
				name, why, strings.Join(Names(), ", "), name)
		}
		o.Functions = []string{name}
	} else {
		f, err := FunctionOf(w)
		if err != nil {
			return nil, fmt.Errorf("%s: %s, and the pipeline cannot capture it: %w", name, why, err)
		}
		if f.BuiltIn() {
			o.Functions = []string{name}
		} else {
			o.Own = []Function{f}
		}
	}
	if err := CheckHost(); err != nil {
		return nil, fmt.Errorf("cannot capture %s (%s): %w", name, why, err)
	}
	fmt.Fprintf(log, "corpus: capturing %s first (%s)\n", name, why)
	if _, err := Capture(ctx, o); err != nil {
		return nil, err
	}
	if w, err = OpenWorkload(filepath.Join(dir, name)); err != nil {
		return nil, err
	}
	return w, w.Restorable()
}

// restorable opens workload name in dir and says why it cannot be restored
// as it is ("" if it can): w is nil when the workload is missing.
func restorable(dir, name string) (w *Workload, why string, err error) {
	w, err = OpenWorkload(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		var m Meta
		if b, rerr := os.ReadFile(filepath.Join(dir, name, MetaFile)); rerr == nil && json.Unmarshal(b, &m) == nil && m.FunctionFile != "" {
			// A brought function is recaptured from its kept module
			// only; an incomplete one needs the operator's file.
			origin := m.Origin
			if origin == "" {
				origin = "FILE.py"
			}
			return nil, "", fmt.Errorf("%w: capture it again with `aquifer corpus capture --function-file %s --name %s --out %s --force`", err, origin, name, dir)
		}
		return nil, "it is not in " + dir, nil
	}
	if err != nil {
		return nil, "", err
	}
	if err := w.Restorable(); err != nil {
		return w, err.Error(), nil
	}
	if _, err := OpenGuest(CacheDir(), w.Meta.GuestKey); err != nil {
		return w, fmt.Sprintf("its guest %s is not built in %s", w.Meta.GuestKey, CacheDir()), nil
	}
	return w, "", nil
}
