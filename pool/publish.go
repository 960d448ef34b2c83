package pool

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
	"golang.org/x/sys/unix"
)

// Publish puts the image at path into the pool as name.
func (p *Pool) Publish(ctx context.Context, path, name string) (*restore.Info, error) {
	if err := restore.ValidName(name); err != nil {
		return nil, err
	}
	if _, err := p.cfg.Plane.GetSnapshot(ctx, name); err == nil {
		return nil, fmt.Errorf("snapshot %q: %w (`aquifer pool rm %s` removes the published one; or publish under another --name)", name, restore.ErrExists, name)
	} else if !errors.Is(err, control.ErrNotFound) {
		return nil, seamErr(err)
	}
	img, f, err := snapimage.Open(path)
	if err != nil {
		return nil, restore.Mark(restore.ErrInvalid, fmt.Errorf("publishing %q: %w", name, restore.ImageError(err)))
	}
	defer f.Close()
	// Check the segments before anything leaves this host.
	if err := img.CheckSegments(f, nil); err != nil {
		return nil, restore.Mark(restore.ErrInvalid, fmt.Errorf("publishing %q: image %s is corrupt: %w", name, path, err))
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	snap, pl, err := p.publish(ctx, img, f, st.Size(), name)
	if err != nil {
		return nil, seamErr(err)
	}
	return p.info(snap, pl)
}

// publish places an opened, checked image: segments and metadata on the
// memory nodes, the catalog entry, then the hot segment in this pod's CXL
// region and its placement.
func (p *Pool) publish(ctx context.Context, img *snapimage.Image, f *os.File, size int64, name string) (*control.Snapshot, *control.Placement, error) {
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
	// Segments are read from memory nodes in the image's storage unit (4
	// KiB; a 2 MiB image stores pages as their non-zero 4 KiB sub-pages).
	ps := int(img.SubPageSize())
	hot, hm, err := read(hs.Offset, hs.Length)
	if err != nil {
		return nil, nil, err
	}
	defer hm.Unmap()
	cold, cm, err := read(cs.Offset, cs.Length)
	if err != nil {
		return nil, nil, err
	}
	defer cm.Unmap()
	if len(cold) > 0 {
		if objs.Cold, err = p.cfg.RDMA.PublishObject(ctx, segBase(name, "cold", now), ps, cold, 0); err != nil {
			return nil, nil, restore.Mark(restore.ErrUnavailable, fmt.Errorf("writing a cold segment to the memory nodes: %w", err))
		}
	}
	if len(hot) > 0 {
		if objs.Hot, err = p.cfg.RDMA.PublishObject(ctx, segBase(name, "hot", now), ps, hot, 0); err != nil {
			return nil, nil, restore.Mark(restore.ErrUnavailable, fmt.Errorf("writing the hot segment's copy to the memory nodes: %w", err))
		}
	}
	// Metadata object: the image up to the hot segment, the object
	// descriptors, and the prefix length, padded to whole pages.
	metaLen := hs.Offset
	prefix := make([]byte, metaLen)
	if _, err := f.ReadAt(prefix, 0); err != nil {
		return nil, nil, err
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
		return nil, nil, err
	}
	defer mm.Unmap()
	copy(mm.B, blob)
	metaObj, err := p.cfg.RDMA.PublishObject(ctx, segBase(name, "meta", now), ps, mm.B, 0)
	if err != nil {
		return nil, nil, restore.Mark(restore.ErrUnavailable, fmt.Errorf("writing the metadata to the memory nodes: %w", err))
	}
	zero, nhot, ncold := img.Counts()
	h := header{Version: 1, Meta: metaObj, MetaLen: metaLen, ImageLen: uint64(size), Pages: img.Pages(),
		Zero: zero, HotPages: nhot, Cold: ncold, PageSize: uint64(img.PageSize()), MetaSHA256: metaDigest(mm.B),
		HotObj: objs.Hot, ColdObj: objs.Cold}
	hb, _ := json.Marshal(h)
	snap := &control.Snapshot{Name: name, Header: hb, HotBytes: hs.Length, ColdBytes: cs.Length, Published: now,
		Segments: segmentsOf(h)}
	p.seal(snap)
	if err := p.cfg.Plane.PutSnapshot(ctx, snap); err != nil {
		return nil, nil, err
	}
	var pl *control.Placement
	if len(hot) > 0 && p.cfg.PodState != nil {
		if pl, err = p.place(ctx, snap, hot, math.Inf(1)); err != nil {
			p.log.Warn("hot segment not placed in CXL; restores will pre-install from its RDMA copy", "snapshot", name, "err", err)
		} else {
			// A snapshot is published to be restored: it starts as warm as
			// one restore, so that a colder resident is demoted before it.
			p.cfg.PodState.SetHeat(ctx, name, control.Heat{Score: 1, At: time.Now()})
		}
	}
	return snap, pl, nil
}

// segmentsOf lists every memory-node segment an entry's objects hold.
func segmentsOf(h header) []control.SegmentPlacement {
	var out []control.SegmentPlacement
	for _, o := range []struct {
		kind string
		obj  *rdma.Object
	}{{"meta", h.Meta}, {"hot", h.HotObj}, {"cold", h.ColdObj}} {
		if o.obj == nil {
			continue
		}
		for _, seg := range o.obj.Segs {
			sp := control.SegmentPlacement{ID: fmt.Sprintf("%016x", uint64(seg.ID)), Len: uint64(seg.Pages) * uint64(seg.PageSize), Kind: o.kind}
			for _, r := range seg.Replicas {
				sp.Nodes = append(sp.Nodes, string(r.Node))
			}
			if ec := seg.EC; ec != nil {
				// A coded segment is stored as shard segments, one a node.
				for i, r := range ec.Shards {
					out = append(out, control.SegmentPlacement{ID: fmt.Sprintf("%016x", uint64(rdma.ShardID(seg.ID, i))),
						Nodes: []string{string(r.Node)}, Len: uint64(ec.ShardPages) * uint64(seg.PageSize), Kind: o.kind})
				}
				continue
			}
			out = append(out, sp)
		}
	}
	return out
}

// Remove deletes a snapshot from the catalog and the tiers: the catalog
// entry first (no new restore can start), this pod's placement and the
// extents of this host's chunks (other pods' and hosts' sweeps retire
// theirs, finding them orphaned), then its segments on the memory nodes.
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
	if p.cfg.PodState != nil {
		if pl, err := p.cfg.PodState.GetPlacement(ctx, name); err == nil {
			p.cfg.PodState.DeletePlacement(ctx, name, pl.Rev)
			p.retireExtents(ctx, pl)
		}
		p.cfg.PodState.DropHeat(ctx, name)
	}
	p.deleteSegments(ctx, s)
	return nil
}

// deleteSegments deletes an entry's segments from the memory nodes (an
// entry that does not verify names nothing trustworthy: its segments are
// left to the garbage collector). Failures are logged; what is left is
// collected later.
func (p *Pool) deleteSegments(ctx context.Context, s *control.Snapshot) {
	if p.verify(s) != nil {
		return
	}
	var h header
	if json.Unmarshal(s.Header, &h) != nil {
		return
	}
	for _, o := range []*rdma.Object{h.Meta, h.HotObj, h.ColdObj} {
		if o == nil {
			continue
		}
		for _, seg := range o.Segs {
			if err := p.cfg.RDMA.Delete(ctx, seg); err != nil {
				p.log.Warn("deleting a removed snapshot's segment; the garbage collector will retry", "snapshot", s.Name, "segment", fmt.Sprintf("%016x", uint64(seg.ID)), "err", err)
				continue
			}
			p.Counters.SegmentsDeleted.Add(1)
		}
	}
}
