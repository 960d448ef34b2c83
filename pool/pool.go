package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
)

// Config configures a Pool.
type Config struct {
	Plane *control.Plane
	RDMA  *rdma.Client
	// PodState is the pod's coherence state in the control plane; nil runs
	// without a CXL tier (every hot segment is served from its RDMA copy).
	// The host's identities on the region are given (and replaced after a
	// lost lease) with SetCXL.
	PodState *control.PodState
	// Sweep is how often the host retires orphaned or requested extents
	// of its chunks, reclaims and checks the region (default 500ms).
	Sweep time.Duration
	// CheckRegion, if set, is run every sweep; an error puts the CXL tier
	// out of service on this host (restores read the RDMA copies).
	CheckRegion func() error
	// CatalogKey seals catalog entries (CatalogKey(pod secret); seal.go).
	CatalogKey []byte
	Logger     *slog.Logger
}

// Pool publishes and opens snapshots.
type Pool struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	cache map[string]*entry

	// cxl is this host's membership of the CXL tier (nil: none now).
	cxl      atomic.Pointer[membership]
	cxlMu    sync.Mutex // serialises owner operations (a pod.Pod is single-threaded)
	outage   atomic.Pointer[string]
	lastPub  atomic.Int64 // unix ns of this host's last CXL publish
	wake     chan struct{}
	stop     context.CancelFunc
	bg       sync.WaitGroup
	Counters Counters
}

// Counters are the pool's event counts (exported as metrics by embed).
type Counters struct {
	Evicted, EvictRequests, OrphansRetired, ChunksAcquired, ChunksReleased atomic.Uint64
}

// entry is an opened snapshot's metadata and RDMA sources, shared by every
// restore of the same published version, and its CXL placement as last
// seen in the catalog (kept current by a watch).
type entry struct {
	published time.Time
	img       *snapimage.Image
	cold      restore.ColdSource
	fallback  restore.HotSource
	hot       atomic.Pointer[control.HotPlacement]
}

// New creates a pool. Close stops its background work.
func New(cfg Config) (*Pool, error) {
	if cfg.Plane == nil || cfg.RDMA == nil || len(cfg.CatalogKey) < 32 {
		return nil, errors.New("pool: needs a control plane, an RDMA client and the catalog key")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Sweep <= 0 {
		cfg.Sweep = 500 * time.Millisecond
	}
	p := &Pool{cfg: cfg, log: cfg.Logger, cache: map[string]*entry{}, wake: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	cfg.Plane.WatchSnapshots(ctx, p.catalogChanged)
	if cfg.PodState != nil {
		p.bg.Add(1)
		go p.sweepLoop(ctx)
	}
	return p, nil
}

// Close stops the pool's background work and leaves the CXL tier.
func (p *Pool) Close() {
	p.stop()
	p.bg.Wait()
	p.ClearCXL("closing")
}

// catalogChanged keeps cached placements current: an eviction or removal
// seen here stops restores from trying CXL for a segment that is gone.
func (p *Pool) catalogChanged(name string, s *control.Snapshot) {
	if s != nil && p.verify(s) != nil {
		s = nil // forget it: the next Open reads it again and refuses it
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.cache[name]
	if !ok {
		return
	}
	if s == nil || !s.Published.Equal(e.published) {
		delete(p.cache, name)
		e.hot.Store(nil)
		return
	}
	e.hot.Store(s.Hot)
}

// header is the catalog's image header: where the pieces live.
type header struct {
	Version  int          `json:"version"`
	Meta     *rdma.Object `json:"meta"`
	MetaLen  uint64       `json:"meta_len"`
	ImageLen uint64       `json:"image_len"`
	Pages    uint64       `json:"pages"`
	Zero     uint64       `json:"zero_pages"`
	HotPages uint64       `json:"hot_pages"`
	Cold     uint64       `json:"cold_pages"`
	PageSize uint64       `json:"page_size,omitempty"`
	// MetaSHA256 binds the metadata object to the sealed entry.
	MetaSHA256 string `json:"meta_sha256"`
}

// objects is stored after the image metadata in the meta object.
type objects struct {
	Hot  *rdma.Object `json:"hot,omitempty"`
	Cold *rdma.Object `json:"cold,omitempty"`
}

func segBase(name, part string, at time.Time) rdma.SegmentID {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%s/%d", name, part, at.UnixNano())
	return rdma.SegmentID(h.Sum64() &^ 0xFFFF) // room for 65536 segments per object
}

// seamErr classifies control-plane errors for the daemon.
func seamErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, control.ErrNotFound):
		return restore.Mark(restore.ErrNotFound, err)
	case errors.Is(err, control.ErrExists):
		return restore.Mark(restore.ErrExists, err)
	case errors.Is(err, control.ErrUnavailable):
		return restore.Mark(restore.ErrUnavailable, err)
	}
	return err
}

// info describes a catalog entry.
func (p *Pool) info(s *control.Snapshot) (*restore.Info, error) {
	if err := p.verify(s); err != nil {
		return nil, err
	}
	var h header
	if err := json.Unmarshal(s.Header, &h); err != nil {
		return nil, fmt.Errorf("snapshot %q: bad catalog header: %w", s.Name, err)
	}
	in := &restore.Info{Name: s.Name, Pages: h.Pages, ZeroPages: h.Zero, HotPages: h.HotPages, ColdPages: h.Cold,
		HotBytes: s.HotBytes, ColdBytes: s.ColdBytes, HotTier: "rdma", Published: s.Published}
	if h.PageSize == 0 {
		h.PageSize = 4096 // entries published before the header recorded it
	}
	in.MemBytes = h.Pages * h.PageSize
	if s.Hot != nil {
		in.HotTier = "cxl"
	}
	return in, nil
}

// List returns the catalog.
func (p *Pool) List(ctx context.Context) ([]*restore.Info, error) {
	l, err := p.cfg.Plane.ListSnapshots(ctx)
	if err != nil {
		return nil, seamErr(err)
	}
	out := make([]*restore.Info, 0, len(l))
	for _, s := range l {
		in, err := p.info(s)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

// Restored implements restore.Opener.
func (p *Pool) Restored(ctx context.Context, name string) {
	if err := p.cfg.Plane.TouchRestored(ctx, name, time.Now()); err != nil {
		p.log.Warn("recording restore", "snapshot", name, "err", err)
	}
}
