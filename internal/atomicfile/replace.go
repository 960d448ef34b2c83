package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Replace writes data to path atomically but not durably: a reader — or
// this process restarted after a crash — sees the previous file or the
// complete new one, never a partial write, but nothing is fsynced, so a
// crash of the machine may lose the write. It is for state that is only
// meaningful while the machine runs (a pager's record of the VMs it
// serves, which die with the machine), where an fsync per write would sit
// on a latency-critical path.
func Replace(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
