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
	// MemTier, if set, makes this host a candidate to look after the
	// memory tier (re-replication and drains; one host of the cluster at a
	// time).
	MemTier *MemTierConfig
	// CatalogKey seals catalog entries (CatalogKey(pod secret); seal.go).
	CatalogKey []byte
	Logger     *slog.Logger
}

// Pool publishes and opens snapshots.
type Pool struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	cache   map[string]*entry
	loading map[string]*flight // opens reading a published version's metadata (open.go)

	// cxl is this host's membership of the CXL tier (nil: none now).
	cxl     atomic.Pointer[membership]
	cxlMu   sync.Mutex // serialises owner operations (a pod.Pod is single-threaded)
	outage  atomic.Pointer[string]
	lastPub atomic.Int64 // unix ns of this host's last CXL publish
	wake    chan struct{}
	ctx     context.Context
	stop    context.CancelFunc
	promos  sync.Map // names being promoted
	bg      sync.WaitGroup
	// heat.go: restores counted, not yet written
	heatMu      sync.Mutex
	heatPending map[string]int
	heatKick    chan struct{}
	heatFlushMu sync.Mutex
	Counters    Counters
	MemTier     MemTierStats
	gcAt        time.Time // the last orphan sweep (the memory tier's leader only)
}

// Counters are the pool's event counts (exported as metrics by embed).
type Counters struct {
	Evicted, EvictRequests, OrphansRetired, ChunksAcquired, ChunksReleased atomic.Uint64
	Promoted, PromoteFailures, SegmentsDeleted                             atomic.Uint64
}

// entry is an opened snapshot's metadata and RDMA sources, shared by every
// restore of the same published version, and its CXL placement as last
// seen in the catalog (kept current by a watch).
type entry struct {
	published time.Time
	rev       int64 // the catalog entry's revision (repair rewrites its header)
	img       *snapimage.Image
	cold      restore.ColdSource
	fallback  restore.HotSource
	// hot is this pod's placement of this version, nil when the hot set
	// is served from its RDMA copy here (kept current by a watch).
	hot atomic.Pointer[control.Placement]
	// segments lists every memory-node segment (for removal).
	objs []*rdma.Object
}

// New creates a pool. Close stops its background work.
func New(cfg Config) (*Pool, error) {
	if cfg.Plane == nil || cfg.RDMA == nil || len(cfg.CatalogKey) < 32 {
		return nil, errors.New("a pool needs a control plane, an RDMA client and the catalog key")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Sweep <= 0 {
		cfg.Sweep = 500 * time.Millisecond
	}
	p := &Pool{cfg: cfg, log: cfg.Logger, cache: map[string]*entry{}, wake: make(chan struct{}, 1),
		heatPending: map[string]int{}, heatKick: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	p.ctx = ctx
	cfg.Plane.WatchSnapshots(ctx, p.catalogChanged)
	if cfg.PodState != nil {
		cfg.PodState.WatchPlacements(ctx, p.placementChanged)
		p.bg.Add(2)
		go p.sweepLoop(ctx)
		go p.heatLoop(ctx)
	}
	if mt := cfg.MemTier; mt != nil {
		if mt.Interval <= 0 {
			mt.Interval = 2 * time.Second
		}
		if mt.DeadAfter <= 0 {
			mt.DeadAfter = 10 * time.Second
		}
		if mt.GCInterval <= 0 {
			mt.GCInterval = time.Minute
		}
		if mt.OrphanGrace <= 0 {
			mt.OrphanGrace = 10 * time.Minute
		}
		p.bg.Add(1)
		go p.memTierLoop(ctx)
	}
	return p, nil
}

// podName is the pod this host belongs to ("" without a CXL tier).
func (p *Pool) podName() string {
	if p.cfg.PodState == nil {
		return ""
	}
	return p.cfg.PodState.Name()
}

// Close stops the pool's background work and leaves the CXL tier.
func (p *Pool) Close() {
	p.stop()
	p.bg.Wait()
	if old := p.cxl.Swap(nil); old != nil {
		p.retireMembership(old) // leaving the region, not an outage: nothing to warn about
	}
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
	if s == nil || !s.Published.Equal(e.published) || s.Rev != e.rev {
		delete(p.cache, name)
		if s == nil || !s.Published.Equal(e.published) {
			e.hot.Store(nil)
		}
	}
}

// placementChanged keeps the cached placements of this pod current.
func (p *Pool) placementChanged(name string, pl *control.Placement) {
	if pl != nil && p.verifyPlacement(pl) != nil {
		pl = nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.cache[name]; ok {
		if pl != nil && !pl.Published.Equal(e.published) {
			pl = nil // it places another version
		}
		e.hot.Store(pl)
	}
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
	// Hot and Cold are the segment objects (also inside the metadata
	// object): the entry names every segment it owns, for removal, repair
	// and the memory nodes' authorization.
	HotObj  *rdma.Object `json:"hot_object,omitempty"`
	ColdObj *rdma.Object `json:"cold_object,omitempty"`
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

// info describes a catalog entry; pl is this pod's placement of it.
func (p *Pool) info(s *control.Snapshot, pl *control.Placement) (*restore.Info, error) {
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
	if pl != nil && pl.Published.Equal(s.Published) && p.verifyPlacement(pl) == nil {
		in.HotTier = "cxl"
	}
	return in, nil
}

// placements returns this pod's placements (none without a CXL tier).
func (p *Pool) placements(ctx context.Context) (map[string]*control.Placement, error) {
	if p.cfg.PodState == nil {
		return nil, nil
	}
	pls, err := p.cfg.PodState.Placements(ctx)
	return pls, seamErr(err)
}

// List returns the catalog.
func (p *Pool) List(ctx context.Context) ([]*restore.Info, error) {
	l, err := p.cfg.Plane.ListSnapshots(ctx)
	if err != nil {
		return nil, seamErr(err)
	}
	pls, err := p.placements(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*restore.Info, 0, len(l))
	for _, s := range l {
		in, err := p.info(s, pls[s.Name])
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

// Restored implements restore.Opener: the restore counts towards the
// snapshot's heat in this pod (written in batches, heat.go), and a
// snapshot restored here whose hot set this pod's region does not hold is
// promoted in the background when the policy says so (tiering.go).
func (p *Pool) Restored(ctx context.Context, name string) {
	if p.cfg.PodState == nil {
		return
	}
	p.countRestore(name)
}
