package pool

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
)

// Open implements restore.Opener: it reads the catalog entry's revision and
// this pod's placement of it in one round trip (the whole entry only when
// its revision is not the cached one), and the image metadata from the
// memory nodes the first time a published version is opened. The returned snapshot's
// CXL source carries the placement; nothing on the restore path reads the
// control plane (a watch keeps cached placements current, so a restore of
// a hot set demoted meanwhile reads the RDMA copy).
func (p *Pool) Open(ctx context.Context, name string) (*restore.Snapshot, error) {
	if err := restore.ValidName(name); err != nil {
		return nil, err
	}
	var (
		rev int64
		pl  *control.Placement
		err error
	)
	withCXL := p.cfg.PodState != nil && p.cxl.Load() != nil
	if withCXL {
		rev, pl, err = p.cfg.PodState.SnapshotRevAndPlacement(ctx, name)
	} else {
		rev, err = p.cfg.Plane.SnapshotRev(ctx, name)
	}
	if err != nil {
		return nil, seamErr(err)
	}
	e, err := p.current(ctx, name, rev)
	if err != nil {
		return nil, err
	}
	s := &restore.Snapshot{Name: name, Image: e.img, Cold: e.cold, HotFallback: e.fallback, Hot: e.fallback,
		Version: e.published.UTC().Format(time.RFC3339Nano)}
	if withCXL {
		if pl != nil && pl.Published.Equal(e.published) && p.verifyPlacement(pl) == nil {
			e.hot.Store(pl)
			s.Hot = &cxlHot{p: p, e: e, place: pl}
		} else {
			e.hot.Store(nil)
		}
	}
	return s, nil
}

// current returns the entry of the catalog's current version of name,
// whose revision the caller has just read (rev). A cached entry verified
// at that revision is used as it is, without reading, unmarshalling and
// verifying the whole entry again (5-10 ms on these machines for the
// captured corpus's entries); any write to the entry, Aquifer's or not,
// changes its revision and sends the open through the full read. The
// revision itself is always read, so a removed or republished snapshot is
// never served from the cache and an unreachable control plane fails the
// open.
//
// Opens that miss the cache at the same revision share one read (loadOnce):
// a burst of cold starts of a function just published, or just republished,
// reads, verifies and decodes its metadata once, not once per VM (25-50 ms
// of CPU each here).
func (p *Pool) current(ctx context.Context, name string, rev int64) (*entry, error) {
	p.mu.Lock()
	e, ok := p.cache[name]
	p.mu.Unlock()
	if ok && e.rev == rev {
		return e, nil
	}
	return p.loadOnce(ctx, fmt.Sprintf("%s\x00%d", name, rev), func() (*entry, error) {
		cat, err := p.cfg.Plane.GetSnapshot(ctx, name)
		if err != nil {
			return nil, seamErr(err)
		}
		return p.entry(ctx, cat)
	})
}

// flight is a load of one snapshot version's entry in progress.
type flight struct {
	done chan struct{}
	e    *entry
	err  error
}

// loadOnce runs load for key unless a load for key is in flight; then it
// waits for that load's answer instead, or for its own context to end. A
// load that failed because its caller's context ended is not an answer for
// the others: they try again, and one of them loads. Any other failure is
// every waiter's answer; the next call loads again.
func (p *Pool) loadOnce(ctx context.Context, key string, load func() (*entry, error)) (*entry, error) {
	for {
		p.mu.Lock()
		f := p.loading[key]
		if f == nil {
			f = &flight{done: make(chan struct{})}
			if p.loading == nil {
				p.loading = map[string]*flight{}
			}
			p.loading[key] = f
			p.mu.Unlock()
			f.e, f.err = load()
			p.mu.Lock()
			delete(p.loading, key)
			p.mu.Unlock()
			close(f.done)
			return f.e, f.err
		}
		p.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if f.err != nil && (errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded)) {
			continue
		}
		return f.e, f.err
	}
}

// entry returns the cached metadata of the published version cat names,
// reading it from the memory nodes on first use.
func (p *Pool) entry(ctx context.Context, cat *control.Snapshot) (*entry, error) {
	if err := p.verify(cat); err != nil {
		return nil, err
	}
	p.mu.Lock()
	if e, ok := p.cache[cat.Name]; ok && e.published.Equal(cat.Published) && e.rev == cat.Rev {
		p.mu.Unlock()
		return e, nil
	}
	p.mu.Unlock()
	var h header
	if err := json.Unmarshal(cat.Header, &h); err != nil {
		return nil, fmt.Errorf("snapshot %q: bad catalog header: %w", cat.Name, err)
	} else if h.Meta == nil {
		return nil, fmt.Errorf("snapshot %q: its catalog header names no metadata object; republish it", cat.Name)
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
	e := &entry{published: cat.Published, rev: cat.Rev, img: img}
	// The header's object descriptors are the current ones (repair moves
	// replicas and rewrites the header, never the immutable metadata
	// object); entries without them fall back to the metadata's copy.
	if h.HotObj != nil || h.ColdObj != nil {
		objs = &objects{Hot: h.HotObj, Cold: h.ColdObj}
	}
	if objs.Cold != nil {
		e.cold = &coldSource{ObjectSource: rdma.ObjectSource{C: p.cfg.RDMA, Obj: objs.Cold}}
	}
	if objs.Hot != nil {
		e.fallback = &rdmaHot{src: rdma.ObjectSource{C: p.cfg.RDMA, Obj: objs.Hot}, n: int(objs.Hot.Len)}
	}
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
		return 0, fmt.Errorf("image read at %d beyond the metadata (%d bytes): segments live in the tiers", off, len(r.b))
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

// rdmaHot reads the hot segment's RDMA copy into a recycled buffer.
type rdmaHot struct {
	src rdma.ObjectSource
	n   int
	mu  sync.Mutex
	buf []byte
}

func (h *rdmaHot) Name() string { return h.src.Name() }

func (h *rdmaHot) With(ctx context.Context, fn func(restore.Segment) error) error {
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
	return fn(restore.Segment{h.buf})
}

// coldSource recycles registered read arenas across restores.
type coldSource struct {
	rdma.ObjectSource
	arenas restore.ArenaPool
}

func (c *coldSource) Arena(n int) ([]byte, func() error, error) {
	return c.arenas.Get(n, c.ObjectSource.Arena)
}
