package pool

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
	"golang.org/x/sys/unix"
)

// Config configures a Pool.
type Config struct {
	Plane *control.Plane
	RDMA  *rdma.Client
	// Pod is this host's handle on the pod's CXL region; nil runs without
	// a CXL tier (every hot segment is served from its RDMA copy).
	Pod *pod.Pod
	// PodChunks lists the chunks this host may acquire for publishing.
	PodChunks []int
	// Readers are extra handles on the same region, each its own host slot
	// (reader identity), so that several restores can read the CXL tier at
	// once; a pod.Pod is not safe for concurrent use. Without them reads
	// share Pod under a lock.
	Readers []*pod.Pod
	// CatalogKey seals catalog entries (CatalogKey(pod secret); seal.go).
	CatalogKey []byte
	Logger     *slog.Logger
}

// Pool publishes and opens snapshots.
type Pool struct {
	cfg   Config
	log   *slog.Logger
	podMu sync.Mutex // a pod.Pod is not safe for concurrent use
	owned map[int]bool

	mu    sync.Mutex
	cache map[string]*entry

	readers chan *pod.Pod
	stop    context.CancelFunc
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

// New creates a pool. Close stops its catalog watch.
func New(cfg Config) (*Pool, error) {
	if cfg.Plane == nil || cfg.RDMA == nil || len(cfg.CatalogKey) < 32 {
		return nil, errors.New("pool: needs a control plane, an RDMA client and the catalog key")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Pool{cfg: cfg, log: cfg.Logger, owned: map[int]bool{}, cache: map[string]*entry{}}
	if len(cfg.Readers) > 0 {
		p.readers = make(chan *pod.Pod, len(cfg.Readers))
		for _, r := range cfg.Readers {
			p.readers <- r
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	cfg.Plane.WatchSnapshots(ctx, p.catalogChanged)
	return p, nil
}

// Close stops the pool's background work.
func (p *Pool) Close() { p.stop() }

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

// Publish puts the image at path into the pool as name.
func (p *Pool) Publish(ctx context.Context, path, name string) (*restore.Info, error) {
	if err := restore.ValidName(name); err != nil {
		return nil, err
	}
	if _, err := p.cfg.Plane.GetSnapshot(ctx, name); err == nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, restore.ErrExists)
	} else if !errors.Is(err, control.ErrNotFound) {
		return nil, seamErr(err)
	}
	img, f, err := snapimage.Open(path)
	if err != nil {
		return nil, restore.Mark(restore.ErrInvalid, fmt.Errorf("publishing %s: %w", path, restore.ImageError(err)))
	}
	defer f.Close()
	// Check the segments before anything leaves this host.
	if err := img.CheckSegments(f, nil); err != nil {
		return nil, restore.Mark(restore.ErrInvalid, fmt.Errorf("publishing %s: image is corrupt: %w", path, err))
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	snap, err := p.publish(ctx, img, f, st.Size(), name)
	if err != nil {
		return nil, seamErr(err)
	}
	return p.info(snap)
}

// publish places an opened, checked image: segments and metadata on the
// memory nodes, the hot segment in CXL, then the catalog entry.
func (p *Pool) publish(ctx context.Context, img *snapimage.Image, f *os.File, size int64, name string) (*control.Snapshot, error) {
	hs, cs := img.Section(snapimage.SecHotSegment), img.Section(snapimage.SecColdSegment)
	read := func(off, n uint64) ([]byte, *offheap.Mapping, error) {
		if n == 0 {
			return nil, nil, nil
		}
		m, err := offheap.Anon(int(n), unix.PROT_READ|unix.PROT_WRITE, 0)
		if err != nil {
			return nil, nil, err
		}
		if _, err := f.ReadAt(m.B, int64(off)); err != nil && err != io.EOF {
			m.Unmap()
			return nil, nil, err
		}
		return m.B, m, nil
	}
	now := time.Now()
	var objs objects
	ps := int(img.PageSize())
	hot, hm, err := read(hs.Offset, hs.Length)
	if err != nil {
		return nil, err
	}
	defer hm.Unmap()
	cold, cm, err := read(cs.Offset, cs.Length)
	if err != nil {
		return nil, err
	}
	defer cm.Unmap()
	if len(cold) > 0 {
		if objs.Cold, err = p.cfg.RDMA.PublishObject(ctx, segBase(name, "cold", now), ps, cold, 0); err != nil {
			return nil, restore.Mark(restore.ErrUnavailable, fmt.Errorf("cold segment to memory nodes: %w", err))
		}
	}
	if len(hot) > 0 {
		if objs.Hot, err = p.cfg.RDMA.PublishObject(ctx, segBase(name, "hot", now), ps, hot, 0); err != nil {
			return nil, restore.Mark(restore.ErrUnavailable, fmt.Errorf("hot segment copy to memory nodes: %w", err))
		}
	}
	// Metadata object: the image up to the hot segment, the object
	// descriptors, and the prefix length, padded to whole pages.
	metaLen := hs.Offset
	prefix := make([]byte, metaLen)
	if _, err := f.ReadAt(prefix, 0); err != nil {
		return nil, err
	}
	ob, _ := json.Marshal(objs)
	blob := append(prefix, ob...)
	var tail [16]byte
	binary.LittleEndian.PutUint64(tail[:], uint64(len(ob)))
	copy(tail[8:], "AQPOOLM1")
	blob = append(blob, tail[:]...)
	if pad := len(blob) % ps; pad != 0 {
		blob = append(blob, make([]byte, ps-pad)...)
	}
	mm, err := offheap.Anon(len(blob), unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		return nil, err
	}
	defer mm.Unmap()
	copy(mm.B, blob)
	metaObj, err := p.cfg.RDMA.PublishObject(ctx, segBase(name, "meta", now), ps, mm.B, 0)
	if err != nil {
		return nil, restore.Mark(restore.ErrUnavailable, fmt.Errorf("metadata to memory nodes: %w", err))
	}
	zero, nhot, ncold := img.Counts()
	h := header{Version: 1, Meta: metaObj, MetaLen: metaLen, ImageLen: uint64(size), Pages: img.Pages(),
		Zero: zero, HotPages: nhot, Cold: ncold, PageSize: uint64(ps), MetaSHA256: metaDigest(mm.B)}
	hb, _ := json.Marshal(h)
	snap := &control.Snapshot{Name: name, Header: hb, HotBytes: hs.Length, ColdBytes: cs.Length, Published: now}
	if len(hot) > 0 && p.cfg.Pod != nil {
		ref, err := p.publishHot(ctx, name, hot)
		if err != nil {
			p.log.Warn("hot segment not placed in CXL; restores will pre-install from its RDMA copy", "snapshot", name, "err", err)
		} else {
			snap.Hot = &control.HotPlacement{Descriptor: ref.Desc, Gen: ref.Gen, Token: ref.Token, Len: uint64(ref.Len)}
		}
	}
	p.seal(snap)
	if err := p.cfg.Plane.PutSnapshot(ctx, snap); err != nil {
		return nil, err
	}
	return snap, nil
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

// publishHot writes the hot segment into CXL, evicting least recently
// restored snapshots' hot segments when the region is full.
func (p *Pool) publishHot(ctx context.Context, name string, hot []byte) (pod.Ref, error) {
	p.podMu.Lock()
	defer p.podMu.Unlock()
	if err := p.acquireChunks(ctx); err != nil {
		return pod.Ref{}, err
	}
	for {
		ref, err := p.cfg.Pod.Publish(ctx, name, hot)
		if err == nil {
			return ref, nil
		}
		if !errors.Is(err, pod.ErrNoSpace) {
			return pod.Ref{}, err
		}
		evicted, eerr := p.evictOneLocked(ctx, name)
		if eerr != nil {
			return pod.Ref{}, fmt.Errorf("pool: CXL tier full and nothing to evict: %w", err)
		}
		p.log.Info("CXL tier full: demoted a hot segment to the RDMA tier", "evicted", evicted, "for", name)
	}
}

func (p *Pool) acquireChunks(ctx context.Context) error {
	for _, c := range p.cfg.PodChunks {
		if p.owned[c] {
			continue
		}
		if err := p.cfg.Pod.Acquire(ctx, c); err != nil {
			return fmt.Errorf("pool: acquiring CXL chunk %d: %w", c, err)
		}
		p.owned[c] = true
	}
	return nil
}

// evictOneLocked demotes the least recently restored snapshot's hot
// segment (other than keep) from CXL: its catalog entry drops the CXL
// placement first, then the extent is unpublished and later reclaimed once
// no host can still be reading it. The RDMA copy stays.
func (p *Pool) evictOneLocked(ctx context.Context, keep string) (string, error) {
	order, err := p.cfg.Plane.EvictionOrder(ctx)
	if err != nil {
		return "", err
	}
	for _, s := range order {
		if s.Name == keep {
			continue
		}
		p.reseal(s, func(s *control.Snapshot) { s.Hot = nil })
		if err := p.cfg.Plane.UpdateSnapshot(ctx, s, nil); err != nil {
			return "", err
		}
		if err := p.cfg.Pod.Unpublish(ctx, s.Name); err != nil && !errors.Is(err, pod.ErrNotFound) {
			return "", err
		}
		if _, err := p.cfg.Pod.Reclaim(ctx); err != nil {
			return "", err
		}
		p.mu.Lock()
		if e, ok := p.cache[s.Name]; ok {
			e.hot.Store(nil)
		}
		p.mu.Unlock()
		return s.Name, nil
	}
	return "", errors.New("pool: no hot segment to evict")
}

// Remove deletes a snapshot from the catalog and the tiers.
func (p *Pool) Remove(ctx context.Context, name string) error {
	if err := restore.ValidName(name); err != nil {
		return err
	}
	s, err := p.cfg.Plane.GetSnapshot(ctx, name)
	if err != nil {
		return seamErr(err)
	}
	if err := p.cfg.Plane.DeleteSnapshot(ctx, name); err != nil {
		return seamErr(err)
	}
	p.mu.Lock()
	if e, ok := p.cache[name]; ok {
		e.hot.Store(nil)
		delete(p.cache, name)
	}
	p.mu.Unlock()
	if s.Hot != nil && p.cfg.Pod != nil {
		p.podMu.Lock()
		if err := p.cfg.Pod.Unpublish(ctx, name); err != nil && !errors.Is(err, pod.ErrNotFound) {
			p.log.Warn("unpublishing CXL extent", "snapshot", name, "err", err)
		}
		p.cfg.Pod.Reclaim(ctx)
		p.podMu.Unlock()
	}
	// Memory-node segments are immutable and unreferenced now; deleting
	// them is the memory nodes' garbage collection (not yet implemented).
	return nil
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

// Open implements restore.Opener: it reads the catalog entry once, and the
// image metadata from the memory nodes the first time a published version
// is opened. The returned snapshot's CXL source carries the placement the
// entry named; nothing on the restore path reads the control plane.
func (p *Pool) Open(ctx context.Context, name string) (*restore.Snapshot, error) {
	if err := restore.ValidName(name); err != nil {
		return nil, err
	}
	cat, err := p.cfg.Plane.GetSnapshot(ctx, name)
	if err != nil {
		return nil, seamErr(err)
	}
	e, err := p.entry(ctx, cat)
	if err != nil {
		return nil, err
	}
	s := &restore.Snapshot{Name: name, Image: e.img, Cold: e.cold, HotFallback: e.fallback, Hot: e.fallback}
	if cat.Hot != nil && p.cfg.Pod != nil {
		s.Hot = &cxlHot{p: p, e: e, place: cat.Hot}
	}
	return s, nil
}

// entry returns the cached metadata of the published version cat names,
// reading it from the memory nodes on first use.
func (p *Pool) entry(ctx context.Context, cat *control.Snapshot) (*entry, error) {
	if err := p.verify(cat); err != nil {
		return nil, err
	}
	p.mu.Lock()
	if e, ok := p.cache[cat.Name]; ok && e.published.Equal(cat.Published) {
		e.hot.Store(cat.Hot)
		p.mu.Unlock()
		return e, nil
	}
	p.mu.Unlock()
	var h header
	if err := json.Unmarshal(cat.Header, &h); err != nil || h.Meta == nil {
		return nil, fmt.Errorf("snapshot %q: bad catalog header: %v", cat.Name, err)
	}
	src := &rdma.ObjectSource{C: p.cfg.RDMA, Obj: h.Meta}
	buf, release, err := src.Arena(int(h.Meta.Len))
	if err != nil {
		return nil, err
	}
	defer release()
	if err := src.Read(ctx, 0, buf, false); err != nil {
		return nil, restore.Mark(restore.ErrUnavailable, fmt.Errorf("snapshot %q: reading its metadata from the memory nodes: %w", cat.Name, err))
	}
	if err := checkMeta(cat.Name, h, buf); err != nil {
		return nil, err
	}
	img, objs, err := decodeMeta(bytes.Clone(buf), h)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", cat.Name, err)
	}
	e := &entry{published: cat.Published, img: img}
	if objs.Cold != nil {
		e.cold = &coldSource{ObjectSource: rdma.ObjectSource{C: p.cfg.RDMA, Obj: objs.Cold}}
	}
	if objs.Hot != nil {
		e.fallback = &rdmaHot{src: rdma.ObjectSource{C: p.cfg.RDMA, Obj: objs.Hot}, n: int(objs.Hot.Len)}
	}
	e.hot.Store(cat.Hot)
	p.mu.Lock()
	p.cache[cat.Name] = e
	p.mu.Unlock()
	return e, nil
}

func decodeMeta(meta []byte, h header) (*snapimage.Image, *objects, error) {
	if uint64(len(meta)) < h.MetaLen+16 {
		return nil, nil, errors.New("metadata object too short")
	}
	// The trailer sits right after the JSON, before the page padding: find
	// it by scanning back from the end for the magic.
	end := bytes.LastIndex(meta, []byte("AQPOOLM1"))
	if end < 8 || uint64(end) < h.MetaLen+8 {
		return nil, nil, errors.New("metadata object has no trailer")
	}
	n := binary.LittleEndian.Uint64(meta[end-8:])
	js := meta[h.MetaLen:]
	if n > uint64(len(js)) {
		return nil, nil, errors.New("metadata object trailer out of range")
	}
	var objs objects
	if err := json.Unmarshal(js[:n], &objs); err != nil {
		return nil, nil, fmt.Errorf("metadata object descriptors: %w", err)
	}
	img, err := snapimage.Read(&prefixReader{b: meta[:h.MetaLen]}, int64(h.ImageLen))
	if err != nil {
		return nil, nil, err
	}
	return img, &objs, nil
}

// prefixReader serves the image metadata; the segments are elsewhere.
type prefixReader struct{ b []byte }

func (r *prefixReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(r.b)) {
		return 0, fmt.Errorf("pool: image read at %d beyond the metadata (%d bytes): segments live in the tiers", off, len(r.b))
	}
	n := copy(p, r.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// errEvicted: the catalog no longer places the hot segment where this
// restore was prepared to read it.
var errEvicted = errors.New("hot segment is no longer in CXL (evicted or replaced)")

// cxlHot serves the hot segment straight from the pod's CXL region, at the
// placement resolved when the VM was prepared.
type cxlHot struct {
	p     *Pool
	e     *entry
	place *control.HotPlacement
}

func (h *cxlHot) Name() string { return "cxl" }

func (h *cxlHot) With(ctx context.Context, fn func([]byte) error) error {
	if cur := h.e.hot.Load(); cur == nil || *cur != *h.place {
		return errEvicted
	}
	pd := h.p.cfg.Pod
	if h.p.readers != nil {
		select {
		case pd = <-h.p.readers:
		case <-ctx.Done():
			return ctx.Err()
		}
		defer func() { h.p.readers <- pd }()
	} else {
		h.p.podMu.Lock()
		defer h.p.podMu.Unlock()
	}
	ref := pod.Ref{Desc: h.place.Descriptor, Gen: h.place.Gen, Token: h.place.Token, Len: uint32(h.place.Len)}
	_, err := pd.Install(ref, func(addr uintptr, n int) error {
		return fn(offheap.At(addr, n))
	})
	return err
}

// rdmaHot reads the hot segment's RDMA copy into a recycled buffer.
type rdmaHot struct {
	src rdma.ObjectSource
	n   int
	mu  sync.Mutex
	buf []byte
}

func (h *rdmaHot) Name() string { return h.src.Name() }

func (h *rdmaHot) With(ctx context.Context, fn func([]byte) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.buf == nil {
		b, _, err := h.src.Arena(h.n)
		if err != nil {
			return err
		}
		h.buf = b
	}
	if err := h.src.Read(ctx, 0, h.buf, false); err != nil {
		return err
	}
	return fn(h.buf)
}

// coldSource recycles registered read arenas across restores.
type coldSource struct {
	rdma.ObjectSource
	arenas restore.ArenaPool
}

func (c *coldSource) Arena(n int) ([]byte, func() error, error) {
	return c.arenas.Get(n, c.ObjectSource.Arena)
}
