package pagerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/pager"
	"github.com/aquifer-pool/aquifer/snapimage"
)

// DirPool serves images from a local directory (<dir>/<name>.img): a
// single-host deployment without tiers, and the reference the pooled path
// is compared with. Opened images are cached and shared by restores.
type DirPool struct {
	Dir string
	mu  sync.Mutex
	img map[string]*Snapshot
}

// Open implements Pool.
func (p *DirPool) Open(ctx context.Context, name string) (*Snapshot, error) {
	if err := control.ValidName(name); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.img[name]; ok {
		return s, nil
	}
	path := filepath.Join(p.Dir, name+".img")
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("pagerd: snapshot %q: %w", name, control.ErrNotFound)
	}
	img, f, err := snapimage.Open(path)
	if err != nil {
		return nil, err
	}
	hot, cold := pager.LocalSegments(img, f)
	s := &Snapshot{Name: name, Image: img, Hot: hot, Cold: cold}
	if p.img == nil {
		p.img = map[string]*Snapshot{}
	}
	p.img[name] = s
	return s, nil
}

// Restored implements Pool.
func (p *DirPool) Restored(context.Context, string) {}
