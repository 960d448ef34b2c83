package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"github.com/aquifer-pool/aquifer/snapimage"
)

// OpenLocal opens the Aquifer image at path as a snapshot whose segments
// are read from the file itself (no tiers). The file stays open for the
// life of the process. A file that is not an image, or is truncated or
// corrupt, gives an error wrapping ErrInvalid.
func OpenLocal(name, path string) (*Snapshot, error) {
	img, f, err := snapimage.Open(path)
	if err != nil {
		return nil, ImageError(err)
	}
	hot, cold := LocalSegments(img, f)
	return &Snapshot{Name: name, Image: img, Hot: hot, Cold: cold}, nil
}

// ImageError classifies an error from opening or checking an image: a
// missing file is ErrNotFound, a malformed one ErrInvalid.
func ImageError(err error) error {
	var fe *snapimage.FormatError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &fe):
		return Mark(ErrInvalid, fmt.Errorf("not a valid Aquifer image: %w", err))
	case errors.Is(err, fs.ErrNotExist):
		return Mark(ErrNotFound, err)
	}
	return err
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidName checks a snapshot name: 1 to 128 letters, digits, '.', '_'
// or '-', starting with a letter or digit.
func ValidName(n string) error {
	if !nameRE.MatchString(n) {
		return fmt.Errorf("%w name %q: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, n)
	}
	return nil
}

// Dir serves images from a local directory (<Dir>/<name>.img): a
// single-host deployment without tiers, and the reference the pooled path
// is compared with. Opened images are cached and shared by restores.
type Dir struct {
	Path string
	mu   sync.Mutex
	open map[string]*Snapshot
}

// Open implements Opener.
func (d *Dir) Open(ctx context.Context, name string) (*Snapshot, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.open[name]; ok {
		return s, nil
	}
	path := filepath.Join(d.Path, name+".img")
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w (no image %s)", name, ErrNotFound, path)
	}
	s, err := OpenLocal(name, path)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, err)
	}
	if d.open == nil {
		d.open = map[string]*Snapshot{}
	}
	d.open[name] = s
	return s, nil
}

// Restored implements Opener.
func (d *Dir) Restored(context.Context, string) {}
