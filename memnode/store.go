package memnode

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/internal/atomicfile"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/rdma/wire"
	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
)

// Errors returned by Store; the server maps them to wire codes.
var (
	ErrNotFound    = errors.New("segment not found")
	ErrExists      = errors.New("segments are immutable and this ID is stored with other bytes")
	ErrNoSpace     = errors.New("node capacity exhausted")
	ErrOutOfBounds = errors.New("read out of bounds")
	ErrBadDigest   = errors.New("page digest mismatch")
)

// segment is one published, immutable segment in a slab.
type segment struct {
	id       uint64
	pageSize uint32
	digests  []uint64
	slab     *slab
	off      uint64 // within slab
	data     []byte // slab.m.B[off : off+len]
	refs     atomic.Int64
	dead     atomic.Bool
	freeOnce sync.Once
	// writer is the identity that stored the segment ("" for segments
	// stored in-process or before writers were recorded); putAt is when.
	// Both are persisted with it.
	writer string
	putAt  time.Time
}

type extent struct{ off, len uint64 }

// slab is one large off-heap mapping with a first-fit free list.
type slab struct {
	m    *offheap.Mapping
	free []extent // sorted by off, coalesced
	rkey uint32   // remote key when exposed over RDMA
}

func (s *slab) alloc(n uint64) (uint64, bool) {
	for i, e := range s.free {
		if e.len >= n {
			off := e.off
			if e.len == n {
				s.free = append(s.free[:i], s.free[i+1:]...)
			} else {
				s.free[i] = extent{e.off + n, e.len - n}
			}
			return off, true
		}
	}
	return 0, false
}

func (s *slab) release(off, n uint64) {
	i := sort.Search(len(s.free), func(i int) bool { return s.free[i].off > off })
	s.free = append(s.free, extent{})
	copy(s.free[i+1:], s.free[i:])
	s.free[i] = extent{off, n}
	// coalesce with neighbours
	if i+1 < len(s.free) && s.free[i].off+s.free[i].len == s.free[i+1].off {
		s.free[i].len += s.free[i+1].len
		s.free = append(s.free[:i+1], s.free[i+2:]...)
	}
	if i > 0 && s.free[i-1].off+s.free[i-1].len == s.free[i].off {
		s.free[i-1].len += s.free[i].len
		s.free = append(s.free[:i], s.free[i+1:]...)
	}
}

// Store holds segments in slabs and on disk.
type Store struct {
	capacity uint64
	slabSize uint64
	dataDir  string
	log      *slog.Logger

	mu       sync.RWMutex
	segs     map[uint64]*segment
	ids      []uint64 // the keys of segs, sorted (for List)
	slabs    []*slab
	mapped   uint64 // bytes of slabs mapped
	used     atomic.Uint64
	nsegs    atomic.Int64
	allocMu  sync.Mutex
	persistM sync.Mutex
	expose   func([]byte) (uint32, error)
}

// Expose registers every slab, present and future, for one-sided remote
// reads through f (an RDMA memory registration returning the remote key).
func (s *Store) Expose(f func([]byte) (uint32, error)) error {
	s.allocMu.Lock()
	defer s.allocMu.Unlock()
	for _, sl := range s.slabs {
		k, err := f(sl.m.B)
		if err != nil {
			return fmt.Errorf("exposing a slab over RDMA: %w", err)
		}
		sl.rkey = k
	}
	s.expose = f
	return nil
}

// Locate returns where a segment lives for one-sided reads: its address in
// the node's memory and the slab's remote key (0, 0 when not exposed).
func (s *Store) Locate(id uint64) (addr uint64, rkey uint32, err error) {
	g := s.acquire(id)
	if g == nil {
		return 0, 0, fmt.Errorf("%w: %#x", ErrNotFound, id)
	}
	defer s.release(g)
	if g.slab.rkey == 0 {
		return 0, 0, nil
	}
	return uint64(offheap.AddrOf(g.data)), g.slab.rkey, nil
}

// OpenStore creates a store of capacity bytes in slabs of slabSize and loads
// every segment file from dataDir ("" keeps segments in memory only).
func OpenStore(capacity, slabSize uint64, dataDir string, log *slog.Logger) (*Store, error) {
	if capacity == 0 {
		return nil, fmt.Errorf("capacity must be positive")
	}
	if slabSize == 0 || slabSize > capacity {
		slabSize = capacity
	}
	page := uint64(unix.Getpagesize())
	slabSize = (slabSize + page - 1) &^ (page - 1)
	s := &Store{capacity: capacity, slabSize: slabSize, dataDir: dataDir, log: log, segs: map[uint64]*segment{}}
	if dataDir != "" {
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return nil, fmt.Errorf("creating the data directory: %w", err)
		}
		if err := s.load(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Close unmaps every slab. No read may be in flight.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var first error
	for _, sl := range s.slabs {
		if err := sl.m.Unmap(); err != nil && first == nil {
			first = err
		}
	}
	s.slabs, s.segs, s.ids = nil, map[uint64]*segment{}, nil
	return first
}

// Capacity, Used and Segments report occupancy.
func (s *Store) Capacity() uint64 { return s.capacity }

// Used is the bytes held by live segments.
func (s *Store) Used() uint64 { return s.used.Load() }

// Segments is the number of live segments.
func (s *Store) Segments() int { return int(s.nsegs.Load()) }

func (s *Store) allocate(n uint64) (*slab, uint64, error) {
	s.allocMu.Lock()
	defer s.allocMu.Unlock()
	for _, sl := range s.slabs {
		if off, ok := sl.alloc(n); ok {
			return sl, off, nil
		}
	}
	size := s.slabSize
	if n > size {
		size = n
	}
	page := uint64(unix.Getpagesize())
	size = (size + page - 1) &^ (page - 1)
	if s.mapped+size > s.capacity {
		size = (s.capacity - s.mapped) &^ (page - 1)
		if size < n {
			return nil, 0, fmt.Errorf("%w: %d bytes requested, %d of %d bytes in use", ErrNoSpace, n, s.used.Load(), s.capacity)
		}
	}
	m, err := offheap.Anon(int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
	if err != nil {
		return nil, 0, err
	}
	sl := &slab{m: m, free: []extent{{0, size}}}
	if s.expose != nil {
		if sl.rkey, err = s.expose(m.B); err != nil {
			m.Unmap()
			return nil, 0, fmt.Errorf("exposing a new slab over RDMA: %w", err)
		}
	}
	s.slabs = append(s.slabs, sl)
	s.mapped += size
	off, _ := sl.alloc(n)
	return sl, off, nil
}

func (s *Store) freeSeg(g *segment) {
	g.freeOnce.Do(func() {
		s.allocMu.Lock()
		g.slab.release(g.off, uint64(len(g.data)))
		s.allocMu.Unlock()
		s.used.Add(-uint64(len(g.data)))
	})
}

// VerifyPages checks data against digests.
func VerifyPages(data []byte, pageSize uint32, digests []uint64) error {
	for i, d := range digests {
		p := data[uint64(i)*uint64(pageSize) : uint64(i+1)*uint64(pageSize)]
		if xxhash.Sum64(p) != d {
			return fmt.Errorf("%w on page %d", ErrBadDigest, i)
		}
	}
	return nil
}

// Put publishes a segment. It verifies the digests, persists to the data
// dir, copies into a slab and only then makes it readable. It reports
// whether an identical segment already existed.
func (s *Store) Put(p *wire.Put) (seg *segment, existed bool, err error) {
	return s.PutAs(p, "")
}

// PutAs is Put on behalf of writer (the client identity recorded, and
// persisted, with a new segment; an identical re-put keeps the first
// writer).
func (s *Store) PutAs(p *wire.Put, writer string) (seg *segment, existed bool, err error) {
	if len(writer) > wire.MaxIdentity {
		return nil, false, fmt.Errorf("put segment %#x: writer identity of %d bytes (max %d)", p.Segment, len(writer), wire.MaxIdentity)
	}
	return s.put(p, writer, time.Now(), s.dataDir != "")
}

func (s *Store) put(p *wire.Put, writer string, at time.Time, persist bool) (seg *segment, existed bool, err error) {
	if err := VerifyPages(p.Data, p.PageSize, p.Digests); err != nil {
		return nil, false, fmt.Errorf("put segment %#x: %w (data damaged in transit or wrong digests)", p.Segment, err)
	}
	s.persistM.Lock() // serialises puts of the same ID; puts are rare next to reads
	defer s.persistM.Unlock()
	s.mu.RLock()
	old := s.segs[p.Segment]
	s.mu.RUnlock()
	if old != nil {
		if old.pageSize == p.PageSize && bytes.Equal(old.data, p.Data) {
			return old, true, nil
		}
		return nil, false, fmt.Errorf("%w: %#x", ErrExists, p.Segment)
	}
	n := uint64(len(p.Data))
	sl, off, err := s.allocate(n)
	if err != nil {
		return nil, false, err
	}
	g := &segment{id: p.Segment, pageSize: p.PageSize, digests: p.Digests, slab: sl, off: off, data: sl.m.B[off : off+n], writer: writer, putAt: at}
	s.used.Add(n)
	copy(g.data, p.Data)
	if persist {
		if err := s.persist(g); err != nil {
			s.freeSeg(g)
			return nil, false, err
		}
	}
	s.mu.Lock()
	s.segs[g.id] = g
	i, _ := slices.BinarySearch(s.ids, g.id)
	s.ids = slices.Insert(s.ids, i, g.id)
	s.mu.Unlock()
	s.nsegs.Add(1)
	return g, false, nil
}

// acquire pins a segment for reading; call release when done.
func (s *Store) acquire(id uint64) *segment {
	s.mu.RLock()
	g := s.segs[id]
	if g != nil {
		g.refs.Add(1)
	}
	s.mu.RUnlock()
	return g
}

func (s *Store) release(g *segment) {
	if g.refs.Add(-1) == 0 && g.dead.Load() {
		s.freeSeg(g)
	}
}

// Delete drops a segment from memory and disk.
func (s *Store) Delete(id uint64) error {
	s.persistM.Lock()
	defer s.persistM.Unlock()
	s.mu.Lock()
	g := s.segs[id]
	delete(s.segs, id)
	if i, ok := slices.BinarySearch(s.ids, id); ok {
		s.ids = slices.Delete(s.ids, i, i+1)
	}
	s.mu.Unlock()
	if g == nil {
		return fmt.Errorf("%w: %#x", ErrNotFound, id)
	}
	s.nsegs.Add(-1)
	g.dead.Store(true)
	if g.refs.Load() == 0 {
		s.freeSeg(g)
	}
	if s.dataDir != "" {
		if err := os.Remove(s.segPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return atomicfile.SyncDir(s.dataDir)
	}
	return nil
}

// Stat returns a segment's page size and digests.
func (s *Store) Stat(id uint64) (uint32, []uint64, error) {
	g := s.acquire(id)
	if g == nil {
		return 0, nil, fmt.Errorf("%w: %#x", ErrNotFound, id)
	}
	defer s.release(g)
	return g.pageSize, g.digests, nil
}

// SegmentMeta is what List and Meta tell about a stored segment.
type SegmentMeta struct {
	ID       uint64
	Len      uint64
	PageSize uint32
	Writer   string
	PutAt    time.Time
}

func (g *segment) meta() SegmentMeta {
	return SegmentMeta{ID: g.id, Len: uint64(len(g.data)), PageSize: g.pageSize, Writer: g.writer, PutAt: g.putAt}
}

// Meta describes one stored segment.
func (s *Store) Meta(id uint64) (SegmentMeta, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	g := s.segs[id]
	if g == nil {
		return SegmentMeta{}, fmt.Errorf("%w: %#x", ErrNotFound, id)
	}
	return g.meta(), nil
}

// List returns up to max segments with IDs from from on, in ID order, and
// whether more follow (then from the returned next on).
func (s *Store) List(from uint64, max int) (out []SegmentMeta, more bool, next uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	i, _ := slices.BinarySearch(s.ids, from)
	for ; i < len(s.ids) && len(out) < max; i++ {
		out = append(out, s.segs[s.ids[i]].meta())
	}
	if i < len(s.ids) {
		return out, true, s.ids[i]
	}
	return out, false, 0
}

// ReadAt copies len(dst) bytes at off of segment id into dst, with the
// same bounds checks as a network read. In-process transports (rdma/emu)
// use it.
func (s *Store) ReadAt(id, off uint64, dst []byte) error {
	g := s.acquire(id)
	if g == nil {
		return fmt.Errorf("%w: %#x", ErrNotFound, id)
	}
	defer s.release(g)
	size := uint64(len(g.data))
	if off > size || uint64(len(dst)) > size-off {
		return fmt.Errorf("%w: [%d,+%d) outside segment %#x of %d bytes", ErrOutOfBounds, off, len(dst), id, size)
	}
	copy(dst, g.data[off:])
	return nil
}

// ---- persistence -----------------------------------------------------------

// fileMagic opens a segment file; version 1 files (no writer, no time)
// are still read.
const (
	fileMagic   = "AQSEG002"
	fileMagicV1 = "AQSEG001"
)

func (s *Store) segPath(id uint64) string {
	return filepath.Join(s.dataDir, fmt.Sprintf("seg-%016x.aqs", id))
}

// file layout: magic[8] id u64 pageSize u32 npages u32 digests[n]u64,
// then (version 2) put time i64 (Unix ns), writer length u16, writer,
// then xxhash64(all preceding bytes) u64, then the data.
func encodeFileHeader(g *segment) []byte {
	h := make([]byte, 0, 24+8*len(g.digests)+10+len(g.writer)+8)
	h = append(h, fileMagic...)
	h = binary.LittleEndian.AppendUint64(h, g.id)
	h = binary.LittleEndian.AppendUint32(h, g.pageSize)
	h = binary.LittleEndian.AppendUint32(h, uint32(len(g.digests)))
	for _, d := range g.digests {
		h = binary.LittleEndian.AppendUint64(h, d)
	}
	h = binary.LittleEndian.AppendUint64(h, uint64(g.putAt.UnixNano()))
	h = binary.LittleEndian.AppendUint16(h, uint16(len(g.writer)))
	h = append(h, g.writer...)
	return binary.LittleEndian.AppendUint64(h, xxhash.Sum64(h))
}

// encodeFileHeaderV1 is the version 1 header (tests of old data dirs).
func encodeFileHeaderV1(g *segment) []byte {
	h := make([]byte, 0, 24+8*len(g.digests)+8)
	h = append(h, fileMagicV1...)
	h = binary.LittleEndian.AppendUint64(h, g.id)
	h = binary.LittleEndian.AppendUint32(h, g.pageSize)
	h = binary.LittleEndian.AppendUint32(h, uint32(len(g.digests)))
	for _, d := range g.digests {
		h = binary.LittleEndian.AppendUint64(h, d)
	}
	return binary.LittleEndian.AppendUint64(h, xxhash.Sum64(h))
}

func (s *Store) persist(g *segment) error {
	err := atomicfile.Write(s.segPath(g.id), 0o600, func(w io.Writer) error {
		if _, err := w.Write(encodeFileHeader(g)); err != nil {
			return err
		}
		_, err := w.Write(g.data)
		return err
	})
	if err != nil {
		return fmt.Errorf("persisting segment %#x: %w", g.id, err)
	}
	return nil
}

// load reads every segment file; damaged files are renamed *.corrupt and
// logged, leftover temp files from a crash are removed.
func (s *Store) load() error {
	ents, err := os.ReadDir(s.dataDir)
	if err != nil {
		return fmt.Errorf("reading the data directory: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(s.dataDir, name)
		if strings.HasPrefix(name, ".") { // a temporary file (atomicfile) left by a crash
			s.log.Warn("removing partial segment left by a crash", "file", path)
			os.Remove(path)
			continue
		}
		if !strings.HasPrefix(name, "seg-") || !strings.HasSuffix(name, ".aqs") {
			continue
		}
		id, perr := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "seg-"), ".aqs"), 16, 64)
		if perr == nil {
			perr = s.loadFile(path, id)
		}
		if perr != nil {
			if errors.Is(perr, ErrNoSpace) {
				return fmt.Errorf("the data directory holds more than --capacity: %w", perr)
			}
			s.log.Error("segment file is damaged; moved aside and not served", "file", path, "err", perr)
			os.Rename(path, path+".corrupt")
		}
	}
	if s.Segments() > 0 {
		s.log.Info("loaded segments from data dir", "dir", s.dataDir, "segments", s.Segments(), "bytes", s.Used())
	}
	return nil
}

func (s *Store) loadFile(path string, id uint64) error {
	m, size, err := offheap.OpenFileRO(path)
	if err != nil {
		return err
	}
	defer m.Unmap()
	b := m.B
	if size < 32 || (string(b[:8]) != fileMagic && string(b[:8]) != fileMagicV1) {
		return fmt.Errorf("not a segment file")
	}
	v2 := string(b[:8]) == fileMagic
	if got := binary.LittleEndian.Uint64(b[8:]); got != id {
		return fmt.Errorf("file name says segment %#x, header says %#x", id, got)
	}
	ps := binary.LittleEndian.Uint32(b[16:])
	n := uint64(binary.LittleEndian.Uint32(b[20:]))
	hdr := 24 + 8*n
	var writer string
	var at time.Time
	if v2 {
		if uint64(size) < hdr+10 {
			return fmt.Errorf("truncated header")
		}
		at = time.Unix(0, int64(binary.LittleEndian.Uint64(b[hdr:])))
		wl := uint64(binary.LittleEndian.Uint16(b[hdr+8:]))
		if wl > wire.MaxIdentity || uint64(size) < hdr+10+wl {
			return fmt.Errorf("truncated header")
		}
		writer = string(b[hdr+10 : hdr+10+wl])
		hdr += 10 + wl
	}
	if uint64(size) < hdr+8 {
		return fmt.Errorf("truncated header")
	}
	if xxhash.Sum64(b[:hdr]) != binary.LittleEndian.Uint64(b[hdr:]) {
		return fmt.Errorf("header checksum mismatch")
	}
	if !v2 {
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		at = st.ModTime()
	}
	p := &wire.Put{Segment: id, PageSize: ps, Digests: make([]uint64, n)}
	for i := range p.Digests {
		p.Digests[i] = binary.LittleEndian.Uint64(b[24+8*i:])
	}
	p.Data = b[hdr+8:]
	if uint64(len(p.Data)) != n*uint64(ps) {
		return fmt.Errorf("data is %d bytes, header says %d pages of %d", len(p.Data), n, ps)
	}
	_, _, err = s.put(p, writer, at, false) // already on disk
	return err
}
