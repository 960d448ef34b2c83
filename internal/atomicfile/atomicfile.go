package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// File is a file being written; nothing is visible at its path until
// Commit. Close without Commit discards it.
type File struct {
	*renameio.PendingFile
	path      string
	committed bool
}

// Create starts writing path with permissions perm.
func Create(path string, perm os.FileMode) (*File, error) {
	pf, err := renameio.NewPendingFile(path, renameio.WithPermissions(perm), renameio.IgnoreUmask())
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return &File{PendingFile: pf, path: path}, nil
}

// Commit fsyncs the file, renames it into place and fsyncs the directory.
func (f *File) Commit() error {
	if err := f.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	f.committed = true
	return SyncDir(filepath.Dir(f.path))
}

// Close discards the file unless it was committed. It is safe to defer
// right after Create.
func (f *File) Close() error {
	if f.committed {
		return nil
	}
	return f.Cleanup()
}

// WriteFile writes data to path atomically and durably.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return Write(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// Write writes path atomically and durably with fill, which streams the
// content (w is the temporary *os.File, so fill may also WriteAt, Seek or
// Truncate it). If fill fails nothing changes at path.
func Write(path string, perm os.FileMode, fill func(w io.Writer) error) error {
	f, err := Create(path, perm)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fill(f.PendingFile.File); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Commit()
}

// SyncDir fsyncs a directory, making renames and creations in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// Rename renames oldpath to newpath (a file or a staged directory) and
// fsyncs both parent directories.
func Rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return err
	}
	if err := SyncDir(filepath.Dir(newpath)); err != nil {
		return err
	}
	if od := filepath.Dir(oldpath); od != filepath.Dir(newpath) {
		return SyncDir(od)
	}
	return nil
}
