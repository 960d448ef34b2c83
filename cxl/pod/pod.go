package pod

import (
	"context"
	"errors"
	"fmt"

	"github.com/aquifer-pool/aquifer/cxl"
	"github.com/cespare/xxhash/v2"
)

// Options configure a host's handle.
type Options struct {
	// MaxAttempts bounds read retries before ErrFallback (default 8).
	MaxAttempts int
	// Owner marks a host that will acquire chunks and publish. Only
	// informational here; the region's writable windows must match.
	Owner bool
	// Yield, if set, is called around control-plane calls (the simulator
	// uses it to interleave them with region operations).
	Yield func()
	// Valid, if set, says whether the host's lease is certainly still
	// held. A host that cannot be sure (it was stopped or cut off for
	// about a TTL) must not touch the region as a member any more: reads,
	// publishes and reclamation then fail with ErrFenced before their
	// first store, and the host has to join again.
	Valid func() bool
}

// ErrFallback means a read did not validate within MaxAttempts: the caller
// must fetch the pages from the RDMA tier instead.
var ErrFallback = errors.New("extent did not validate; fall back to the RDMA tier")

// ErrSuperseded means the descriptor named by a Ref has moved on (retired
// or republished): look the key up again.
var ErrSuperseded = errors.New("extent version superseded")

// ErrNotPublished means a scanned descriptor holds no published extent.
var ErrNotPublished = errors.New("descriptor holds no published extent")

// ErrNoSpace means no owned chunk has room for the extent: acquire another
// chunk or reclaim.
var ErrNoSpace = errors.New("no space in owned chunks")

// Stats counts protocol events on one host.
type Stats struct {
	Reads, Retries, Fallbacks, Superseded     int
	BadCRC, BadGen, BadHash, Rechecks         int
	Published, Retired, Freed, RecoveredDescs int
}

// bugs are test-only switches that remove protocol steps. They exist so the
// simulator tests can show that each step is necessary; production code
// never sets them.
type bugs struct {
	noWriterFlush, noWriterFence, noReaderInvalidate, noValidation, noGracePeriod bool
}

type chunkState struct {
	token uint64
	pages []bool   // allocated pages
	gens  []uint64 // current generation of each descriptor
	used  []bool   // descriptor in use (Writing/Published/Retired)
}

type retired struct {
	desc  int
	chunk int
	first int // first page
	pages int
	wait  []hostSeq // hosts that were inside a read when it was retired
}

type hostSeq struct {
	lease Lease
	seq   uint64
}

// Pod is one host's handle on a formatted region. It is not safe for
// concurrent use: a host runs one Pod per reader identity (host slot).
type Pod struct {
	r       cxl.Region
	g       Geometry
	coord   Coordinator
	lease   Lease
	opts    Options
	owned   map[int]*chunkState
	retired []retired
	seq     uint64
	hb      uint64
	serial  uint64
	stats   Stats
	bugs    bugs
	scratch [DescSize]byte
}

// Open attaches host to the pool on r: it validates the superblock, joins
// the control plane and announces the lease in the host's slot.
func Open(ctx context.Context, r cxl.Region, host int, coord Coordinator, opts Options) (*Pod, error) {
	g, err := ReadGeometry(r)
	if err != nil {
		return nil, err
	}
	if host < 0 || host >= g.HostSlots {
		return nil, fmt.Errorf("host %d outside the %d host slots of this pool", host, g.HostSlots)
	}
	if !r.Writable(g.slotOff(host), g.SlotSize) {
		return nil, fmt.Errorf("host %d's slot [%d, +%d) is not writable in this mapping", host, g.slotOff(host), g.SlotSize)
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 8
	}
	p := &Pod{r: r, g: g, coord: coord, opts: opts, owned: map[int]*chunkState{}}
	p.yield()
	l, err := coord.Join(ctx, host)
	p.yield()
	if err != nil {
		return nil, fmt.Errorf("joining the pod: %w", err)
	}
	p.lease = l
	slot := g.slotOff(host)
	// Start with a fresh even read sequence: a previous incarnation's odd
	// value must not stall reclamation (its lease is dead anyway).
	p.seq = (r.Load64(slot+slotReadSeq) + 2) &^ 1
	r.Store64(slot+slotReadSeq, p.seq)
	r.Store64(slot+slotLease, l.ID)
	r.Store64(slot+slotHostID, uint64(host)+1)
	r.Flush(slot, g.SlotSize)
	r.FullFence()
	return p, nil
}

// Geometry returns the pool layout.
func (p *Pod) Geometry() Geometry { return p.g }

// Lease returns the host's lease.
func (p *Pod) Lease() Lease { return p.lease }

// Serial returns the number of Publish calls that reached step 1; the n-th
// publish stores serial n in its descriptor's Aux word.
func (p *Pod) Serial() uint64 { return p.serial }

// Stats returns the event counters.
func (p *Pod) Stats() Stats { return p.stats }

// fenced reports a host that can no longer be sure of its lease.
func (p *Pod) fenced() bool { return p.opts.Valid != nil && !p.opts.Valid() }

func (p *Pod) yield() {
	if p.opts.Yield != nil {
		p.opts.Yield()
	}
}

// Heartbeat bumps the host's heartbeat word (diagnostics for operators; the
// lease, not the heartbeat, decides liveness).
func (p *Pod) Heartbeat() {
	p.hb++
	off := p.g.slotOff(p.lease.Host) + slotHeartbeat
	p.r.Store64(off, p.hb)
	p.r.Flush(off, 8)
	p.r.Fence()
}

// Close leaves the control plane. Owned chunks are released; their
// published extents stay valid for readers.
func (p *Pod) Close(ctx context.Context) error {
	for c, cs := range p.owned {
		_ = p.coord.ReleaseChunk(ctx, p.lease, c, cs.token)
	}
	return p.coord.Leave(ctx, p.lease)
}

// Acquire takes ownership of chunk through the control plane and recovers
// its descriptors: anything a crashed previous owner left Writing (or torn)
// becomes Free, Published extents stay allocated, Retired ones are
// reclaimed after a grace period.
func (p *Pod) Acquire(ctx context.Context, chunk int) error {
	if chunk < 0 || chunk >= p.g.Chunks {
		return fmt.Errorf("chunk %d outside 0..%d", chunk, p.g.Chunks-1)
	}
	if !p.r.Writable(p.g.descOff(chunk*p.g.DescPerChunk), int64(p.g.DescPerChunk)*DescSize) ||
		!p.r.Writable(p.g.chunkOff(chunk), p.g.ChunkSize) {
		return fmt.Errorf("chunk %d is not writable in this mapping (open the region as an owner)", chunk)
	}
	p.yield()
	token, err := p.coord.AcquireChunk(ctx, p.lease, chunk)
	p.yield()
	if err != nil {
		return err
	}
	cs := &chunkState{token: token, pages: make([]bool, p.g.DescPerChunk), gens: make([]uint64, p.g.DescPerChunk), used: make([]bool, p.g.DescPerChunk)}
	var toRetire []retired
	base := chunk * p.g.DescPerChunk
	for i := 0; i < p.g.DescPerChunk; i++ {
		off := p.g.descOff(base + i)
		d, ok := loadDesc(p.r, off, true)
		first, n, inChunk := p.extentPages(chunk, d)
		switch {
		case ok && d.Gen%2 == 0 && d.State == StateFree:
			cs.gens[i] = d.Gen
		case ok && d.Gen%2 == 0 && (d.State == StatePublished || d.State == StateRetired) && inChunk && p.pagesFree(cs, first, n):
			cs.gens[i] = d.Gen
			cs.used[i] = true
			markPages(cs, first, n, true)
			if d.State == StateRetired {
				toRetire = append(toRetire, retired{desc: base + i, chunk: chunk, first: first, pages: n})
			}
		default:
			// Writing (crash mid-publish), torn, or nonsense: never
			// exposed; overwrite as Free with a larger even generation.
			gen := (d.Gen | 1) + 1
			storeDesc(p.r, off, &Desc{Gen: gen, Token: token, State: StateFree, Owner: uint16(p.lease.Host)})
			p.r.Flush(off, DescSize)
			cs.gens[i] = gen
			p.stats.RecoveredDescs++
		}
	}
	p.r.FullFence()
	p.owned[chunk] = cs
	if len(toRetire) > 0 {
		wait, err := p.snapshot(ctx)
		if err != nil {
			return err
		}
		for _, t := range toRetire {
			t.wait = wait
			p.retired = append(p.retired, t)
		}
	}
	return nil
}

func (p *Pod) extentPages(chunk int, d Desc) (first, n int, ok bool) {
	start := p.g.chunkOff(chunk)
	if d.Len == 0 || d.Off < uint64(start) || d.Off%PageSize != 0 || d.Off+uint64(d.Len) > uint64(start+p.g.ChunkSize) {
		return 0, 0, false
	}
	return int((int64(d.Off) - start) / PageSize), int((int64(d.Len) + PageSize - 1) / PageSize), true
}

func (p *Pod) pagesFree(cs *chunkState, first, n int) bool {
	for i := first; i < first+n; i++ {
		if cs.pages[i] {
			return false
		}
	}
	return true
}

func markPages(cs *chunkState, first, n int, v bool) {
	for i := first; i < first+n; i++ {
		cs.pages[i] = v
	}
}

// alloc finds a free descriptor and a run of pages in one owned chunk.
func (p *Pod) alloc(n int) (chunk, di, first int, ok bool) {
	for c := 0; c < p.g.Chunks; c++ {
		cs := p.owned[c]
		if cs == nil {
			continue
		}
		di = -1
		for i, u := range cs.used {
			if !u {
				di = i
				break
			}
		}
		if di < 0 {
			continue
		}
		run := 0
		for i := range cs.pages {
			if cs.pages[i] {
				run = 0
				continue
			}
			run++
			if run == n {
				return c, di, i - n + 1, true
			}
		}
	}
	return 0, 0, 0, false
}

// Publish writes data as a new immutable extent and makes key point to it.
// The previous extent of key, if this host owns it, is retired and freed
// once no live host can still be reading it. Steps (docs/coherence.md):
//
//  1. descriptor -> odd generation, Writing, token; CLWB + SFENCE
//  2. copy the data; CLWB every line; SFENCE
//  3. descriptor -> next even generation, Published, len, hash; CLWB + SFENCE
//  4. catalog put conditioned on the lease and fencing token
func (p *Pod) Publish(ctx context.Context, key string, data []byte) (Ref, error) {
	if len(data) == 0 || int64(len(data)) > p.g.ChunkSize {
		return Ref{}, fmt.Errorf("extent of %d bytes (want 1..%d)", len(data), p.g.ChunkSize)
	}
	n := (len(data) + PageSize - 1) / PageSize
	chunk, di, first, ok := p.alloc(n)
	if !ok {
		if _, err := p.Reclaim(ctx); err != nil {
			return Ref{}, err
		}
		if chunk, di, first, ok = p.alloc(n); !ok {
			return Ref{}, ErrNoSpace
		}
	}
	if p.fenced() {
		return Ref{}, ErrFenced
	}
	cs := p.owned[chunk]
	cs.used[di] = true
	markPages(cs, first, n, true)
	desc := chunk*p.g.DescPerChunk + di
	doff := p.g.descOff(desc)
	eoff := p.g.chunkOff(chunk) + int64(first)*PageSize
	d := Desc{Gen: cs.gens[di] + 1, Token: cs.token, Key: xxhash.Sum64String(key), Off: uint64(eoff),
		Len: uint32(len(data)), State: StateWriting, Owner: uint16(p.lease.Host), Aux: p.serial + 1}
	p.serial++
	// 1. Writing, durable before any data store can reach the device.
	storeDesc(p.r, doff, &d)
	p.r.Flush(doff, DescSize)
	p.r.Fence()
	// 2. Data (not if the lease may have lapsed meanwhile: a new owner
	// may be reusing these pages).
	if p.fenced() {
		return Ref{}, ErrFenced
	}
	p.r.WriteAt(data, eoff)
	if !p.bugs.noWriterFlush {
		p.r.Flush(eoff, int64(len(data)))
	}
	if !p.bugs.noWriterFence {
		p.r.Fence()
	}
	// 3. Published.
	if p.fenced() {
		return Ref{}, ErrFenced
	}
	d.Gen++
	d.State = StatePublished
	d.Hash = xxhash.Sum64(data)
	storeDesc(p.r, doff, &d)
	p.r.Flush(doff, DescSize)
	p.r.Fence()
	cs.gens[di] = d.Gen
	p.stats.Published++
	// 4. Catalog.
	ref := Ref{Desc: desc, Gen: d.Gen, Token: cs.token, Len: d.Len}
	p.yield()
	prev, replaced, err := p.coord.Publish(ctx, p.lease, chunk, cs.token, key, ref)
	p.yield()
	if err != nil {
		// Not in the catalog, so no reader can be sent to it: retire.
		if rerr := p.retire(ctx, ref); rerr != nil {
			return Ref{}, errors.Join(err, rerr)
		}
		return Ref{}, fmt.Errorf("publishing %q: %w", key, err)
	}
	if replaced {
		if err := p.retire(ctx, prev); err != nil {
			return ref, err
		}
	}
	return ref, nil
}

// Unpublish removes key from the catalog and retires its extent.
func (p *Pod) Unpublish(ctx context.Context, key string) error {
	p.yield()
	ref, err := p.coord.Lookup(ctx, key)
	if err != nil {
		return err
	}
	chunk := ref.Desc / p.g.DescPerChunk
	cs := p.owned[chunk]
	if cs == nil {
		return fmt.Errorf("%q is in chunk %d, not owned by host %d", key, chunk, p.lease.Host)
	}
	if err := p.coord.Unpublish(ctx, p.lease, chunk, cs.token, key, ref); err != nil {
		return err
	}
	p.yield()
	return p.retire(ctx, ref)
}

// retire marks ref's descriptor Retired (readers reject it from now on) and
// queues its extent until every host that might be reading it has left its
// read section.
func (p *Pod) retire(ctx context.Context, ref Ref) error {
	chunk := ref.Desc / p.g.DescPerChunk
	cs := p.owned[chunk]
	if cs == nil {
		return nil // another owner's extent: it reclaims its own
	}
	di := ref.Desc % p.g.DescPerChunk
	if cs.gens[di] != ref.Gen || !cs.used[di] {
		return nil // already retired
	}
	if p.fenced() {
		return ErrFenced
	}
	doff := p.g.descOff(ref.Desc)
	d, _ := loadDesc(p.r, doff, false) // our own line: the cache is authoritative
	first, n, ok := p.extentPages(chunk, d)
	if !ok {
		return fmt.Errorf("descriptor %d has an extent outside its chunk", ref.Desc)
	}
	d.Gen += 2
	d.State = StateRetired
	storeDesc(p.r, doff, &d)
	p.r.Flush(doff, DescSize)
	// MFENCE: the retirement must be on the device before the reader
	// slots are sampled (Dekker-style with the reader's announce-then-load).
	p.r.FullFence()
	cs.gens[di] = d.Gen
	wait, err := p.snapshot(ctx)
	if err != nil {
		return err
	}
	p.retired = append(p.retired, retired{desc: ref.Desc, chunk: chunk, first: first, pages: n, wait: wait})
	p.stats.Retired++
	return nil
}

// snapshot samples the read sequence of every live host.
func (p *Pod) snapshot(ctx context.Context) ([]hostSeq, error) {
	p.yield()
	live, err := p.coord.Live(ctx)
	p.yield()
	if err != nil {
		return nil, err
	}
	var out []hostSeq
	for _, l := range live {
		if l.Host == p.lease.Host || l.Host >= p.g.HostSlots {
			continue // our own reads never overlap our own reclamation
		}
		seq, ok := p.readSlot(l)
		if ok && seq%2 == 1 {
			out = append(out, hostSeq{lease: l, seq: seq})
		}
	}
	return out, nil
}

// readSlot loads host l's read sequence if the slot belongs to lease l.
func (p *Pod) readSlot(l Lease) (uint64, bool) {
	slot := p.g.slotOff(l.Host)
	p.r.Invalidate(slot+slotLease, 8)
	p.r.Invalidate(slot+slotReadSeq, 8)
	p.r.FullFence()
	if p.r.Load64(slot+slotLease) != l.ID {
		// Not yet announced: its first read starts after this point
		// and will observe the retirement.
		return 0, false
	}
	return p.r.Load64(slot + slotReadSeq), true
}

// Reclaim frees retired extents whose grace period is over: every host that
// was inside a read when the extent was retired has left that read, or lost
// its lease. It returns the number of extents freed.
func (p *Pod) Reclaim(ctx context.Context) (int, error) {
	if len(p.retired) == 0 {
		return 0, nil
	}
	if p.fenced() {
		return 0, ErrFenced
	}
	p.yield()
	live, err := p.coord.Live(ctx)
	p.yield()
	if err != nil {
		return 0, err
	}
	alive := map[Lease]bool{}
	for _, l := range live {
		alive[l] = true
	}
	freed := 0
	keep := p.retired[:0]
	for _, t := range p.retired {
		done := true
		if !p.bugs.noGracePeriod {
			for _, w := range t.wait {
				if !alive[w.lease] {
					continue // fenced: must rejoin before reading again
				}
				if seq, ok := p.readSlot(w.lease); ok && seq == w.seq {
					done = false
					break
				}
			}
		}
		cs := p.owned[t.chunk]
		if !done || cs == nil {
			if cs != nil {
				keep = append(keep, t)
			}
			continue
		}
		di := t.desc % p.g.DescPerChunk
		doff := p.g.descOff(t.desc)
		d, _ := loadDesc(p.r, doff, false)
		d.State = StateFree
		storeDesc(p.r, doff, &d)
		p.r.Flush(doff, DescSize)
		cs.used[di] = false
		markPages(cs, t.first, t.pages, false)
		freed++
		p.stats.Freed++
	}
	p.retired = keep
	if freed > 0 {
		p.r.Fence()
	}
	return freed, nil
}

// Owns reports whether this host owns the chunk of descriptor desc (only
// the owner may retire the extents in it).
func (p *Pod) Owns(desc int) bool {
	return desc >= 0 && desc < p.g.Descs() && p.owned[desc/p.g.DescPerChunk] != nil
}

// Extents lists the published extents of the chunks this host owns, as
// the Refs a catalog would hold for them.
func (p *Pod) Extents() []Ref {
	var out []Ref
	for c := 0; c < p.g.Chunks; c++ {
		cs := p.owned[c]
		if cs == nil {
			continue
		}
		for i, used := range cs.used {
			if !used {
				continue
			}
			desc := c*p.g.DescPerChunk + i
			d, ok := loadDesc(p.r, p.g.descOff(desc), false) // our own lines
			if ok && d.State == StatePublished && d.Gen == cs.gens[i] {
				out = append(out, Ref{Desc: desc, Gen: d.Gen, Token: d.Token, Len: d.Len})
			}
		}
	}
	return out
}

// Retire retires a published extent of a chunk this host owns that no
// catalog key names any more (an orphan: its publish died before the
// catalog, or the key moved to another host's extent). It is reclaimed
// after the grace period.
func (p *Pod) Retire(ctx context.Context, ref Ref) error { return p.retire(ctx, ref) }

// Owned returns the chunks this host owns, in order.
func (p *Pod) Owned() []int {
	var out []int
	for c := 0; c < p.g.Chunks; c++ {
		if p.owned[c] != nil {
			out = append(out, c)
		}
	}
	return out
}

// ReleaseEmpty gives up owned chunks that hold no extent (published,
// retired or being written), so that other hosts of the pod can acquire
// them. It returns the chunks released.
func (p *Pod) ReleaseEmpty(ctx context.Context) ([]int, error) {
	var out []int
	for c, cs := range p.owned {
		busy := false
		for _, u := range cs.used {
			busy = busy || u
		}
		if busy {
			continue
		}
		p.yield()
		err := p.coord.ReleaseChunk(ctx, p.lease, c, cs.token)
		p.yield()
		if err != nil && !errors.Is(err, ErrFenced) {
			return out, err
		}
		delete(p.owned, c)
		out = append(out, c)
	}
	return out, nil
}

// Pending returns the number of retired extents awaiting their grace period.
func (p *Pod) Pending() int { return len(p.retired) }

// enter/exit bracket a read: the host's read sequence is odd inside, and
// the odd value is on the device (CLWB + MFENCE) before the descriptor is
// loaded.
func (p *Pod) enter() {
	off := p.g.slotOff(p.lease.Host) + slotReadSeq
	p.seq++
	p.r.Store64(off, p.seq)
	p.r.Flush(off, 8)
	p.r.FullFence()
}

func (p *Pod) exit() {
	off := p.g.slotOff(p.lease.Host) + slotReadSeq
	p.seq++
	p.r.Store64(off, p.seq)
	p.r.Flush(off, 8)
	p.r.Fence()
}

// Get looks key up in the catalog and copies its extent into dst, returning
// the number of bytes and the version read.
// A version superseded while being read is looked up again (bounded by
// MaxAttempts).
func (p *Pod) Get(ctx context.Context, key string, dst []byte) (int, Ref, error) {
	for i := 0; ; i++ {
		p.yield()
		ref, err := p.coord.Lookup(ctx, key)
		p.yield()
		if err != nil {
			return 0, Ref{}, err
		}
		n, err := p.ReadRef(ref, dst)
		if errors.Is(err, ErrSuperseded) && i+1 < p.opts.MaxAttempts {
			continue
		}
		if errors.Is(err, ErrSuperseded) {
			p.stats.Fallbacks++
			err = ErrFallback
		}
		return n, ref, err
	}
}

// ReadRef copies the extent named by ref into dst (off-heap guest memory or
// any buffer of at least ref.Len bytes) through invalidate-then-validate:
//
//  1. invalidate + MFENCE + load the descriptor; require CRC, Published and
//     gen/token equal to ref
//  2. only then invalidate the extent, MFENCE, copy it
//  3. verify the payload hash, invalidate + MFENCE + reload the generation;
//     it must be unchanged
//
// A failed check retries; after MaxAttempts it returns ErrFallback.
func (p *Pod) ReadRef(ref Ref, dst []byte) (int, error) {
	if len(dst) < int(ref.Len) {
		return 0, fmt.Errorf("buffer of %d bytes for a %d-byte extent", len(dst), ref.Len)
	}
	_, n, err := p.read(ref, true, func(d Desc) ([]byte, error) {
		buf := dst[:d.Len]
		p.r.ReadAt(buf, int64(d.Off))
		return buf, nil
	})
	return n, err
}

// Install is ReadRef for zero-copy consumers: after the descriptor checks
// and the extent invalidation it hashes the extent in place and, if the hash
// matches, calls install(addr, n) to move the n bytes at virtual address
// addr (for example UFFDIO_COPY straight from the region's mapping into
// guest memory); the generation is re-checked afterwards. Hashing the source
// before the copy is sound: once every line has been seen with the published
// contents, any later refill comes from the device, which holds exactly
// those contents until the extent is retired, and retirement changes the
// generation. (Hashing the destination instead would touch every freshly
// installed guest page, which costs ~10 µs per page on nested-virtualised
// hosts.)
//
// If the re-check fails, install is called again on the next attempt, so the
// caller must make the destination writable again (for uffd: MADV_DONTNEED
// the range, which is safe before the VM resumes). The region must be a real
// mapping (implement cxl.Addresser and Bytes).
func (p *Pod) Install(ref Ref, install func(addr uintptr, n int) error) (int, error) {
	return p.install(ref, true, install)
}

// InstallChecked is Install for a caller that checks each byte itself
// before it uses it (against per-page digests it holds, which is what the
// pager does): the extent is not hashed here, and an error from
// install that wraps ErrStale (the bytes were not what was published)
// is a failed check like a hash mismatch: the read is retried, and after
// MaxAttempts ErrFallback is returned. The protocol is the same; only who
// computes the payload check moves, which saves one pass over the extent.
func (p *Pod) InstallChecked(ref Ref, install func(addr uintptr, n int) error) (int, error) {
	return p.install(ref, false, install)
}

func (p *Pod) install(ref Ref, hash bool, install func(addr uintptr, n int) error) (int, error) {
	m, ok := p.r.(interface {
		cxl.Addresser
		Bytes() []byte
	})
	if !ok {
		return 0, fmt.Errorf("Install needs a mapped region, not %T", p.r)
	}
	_, n, err := p.read(ref, true, func(d Desc) ([]byte, error) {
		if hash && xxhash.Sum64(m.Bytes()[d.Off:d.Off+uint64(d.Len)]) != d.Hash {
			return nil, errBadHash
		}
		if err := install(m.Addr(int64(d.Off)), int(d.Len)); errors.Is(err, ErrStale) {
			return nil, errBadHash
		} else {
			return nil, err
		}
	})
	return n, err
}

var errBadHash = errors.New("extent hash mismatch")

// ErrStale is what an InstallChecked or InstallManyChecked callback
// returns (wrapped) when the bytes it was given do not match what was
// published: a stale or torn read, retried like a hash mismatch.
var ErrStale = errors.New("extent bytes do not match what was published")

// ReadDesc reads whatever version descriptor desc currently publishes
// (scan mode, without the catalog), with the same invalidate-then-validate
// steps; dst must hold a whole chunk. It returns the descriptor read.
// Tools and the multi-process tests use it; serving uses ReadRef.
func (p *Pod) ReadDesc(desc int, dst []byte) (Desc, int, error) {
	if int64(len(dst)) < p.g.ChunkSize {
		return Desc{}, 0, fmt.Errorf("buffer of %d bytes, scan reads need %d", len(dst), p.g.ChunkSize)
	}
	return p.read(Ref{Desc: desc}, false, func(d Desc) ([]byte, error) {
		buf := dst[:d.Len]
		p.r.ReadAt(buf, int64(d.Off))
		return buf, nil
	})
}

func (p *Pod) read(ref Ref, exact bool, copyFn func(Desc) ([]byte, error)) (Desc, int, error) {
	if ref.Desc < 0 || ref.Desc >= p.g.Descs() {
		return Desc{}, 0, fmt.Errorf("descriptor %d outside 0..%d", ref.Desc, p.g.Descs()-1)
	}
	doff := p.g.descOff(ref.Desc)
	p.stats.Reads++
	if p.fenced() {
		return Desc{}, 0, ErrFenced
	}
	p.enter()
	defer p.exit()
	for attempt := 0; attempt < p.opts.MaxAttempts; attempt++ {
		if attempt > 0 {
			p.stats.Retries++
		}
		d, err := p.validate(ref, exact)
		if errors.Is(err, errRetry) {
			continue
		}
		if err != nil {
			return Desc{}, 0, err
		}
		buf, err := copyFn(d)
		if errors.Is(err, errBadHash) && !p.bugs.noValidation {
			p.stats.BadHash++
			continue
		}
		if err != nil {
			return Desc{}, 0, err
		}
		if p.bugs.noValidation {
			return d, int(d.Len), nil
		}
		if buf != nil && xxhash.Sum64(buf) != d.Hash {
			p.stats.BadHash++
			continue
		}
		if !p.recheck(doff, d) {
			continue
		}
		return d, int(d.Len), nil
	}
	p.stats.Fallbacks++
	return Desc{}, 0, ErrFallback
}

// errRetry: this attempt did not validate; try again.
var errRetry = errors.New("retry")

// validate is the reader's first step on one extent, inside a read
// section: invalidate and load the descriptor, require its CRC, Published
// state and (exact) the Ref's generation, token and length, then
// invalidate the extent. It returns errRetry for a check that may pass on
// another attempt.
func (p *Pod) validate(ref Ref, exact bool) (Desc, error) {
	chunk := ref.Desc / p.g.DescPerChunk
	d, crcOK := loadDesc(p.r, p.g.descOff(ref.Desc), !p.bugs.noReaderInvalidate)
	if !crcOK && !p.bugs.noValidation {
		p.stats.BadCRC++
		return Desc{}, errRetry
	}
	if crcOK && exact && d.Gen > ref.Gen && d.Gen%2 == 0 {
		p.stats.Superseded++
		return Desc{}, ErrSuperseded
	}
	if crcOK && !exact && d.Gen%2 == 0 && d.State != StatePublished {
		return Desc{}, ErrNotPublished
	}
	if d.State != StatePublished || d.Gen%2 != 0 || (exact && (d.Gen != ref.Gen || d.Token != ref.Token || d.Len != ref.Len)) {
		p.stats.BadGen++
		return Desc{}, errRetry
	}
	if _, _, ok := p.extentPages(chunk, d); !ok {
		p.stats.BadCRC++
		return Desc{}, errRetry
	}
	if !p.bugs.noReaderInvalidate {
		p.r.Invalidate(int64(d.Off), int64(d.Len))
		p.r.FullFence()
	}
	return d, nil
}

// recheck is the reader's last step: the descriptor's generation is
// unchanged after the copy.
func (p *Pod) recheck(doff int64, d Desc) bool {
	p.r.Invalidate(doff, 8)
	p.r.FullFence()
	if p.r.Load64(doff) != d.Gen {
		p.stats.Rechecks++
		return false
	}
	return true
}

// InstallMany is Install for a value stored as several extents (a hot
// segment larger than a chunk): inside one read section every extent is
// validated and hashed in place, install is called once with all of them
// (in refs' order), and every generation is re-checked afterwards. A
// failed check retries the whole; after MaxAttempts it returns
// ErrFallback. It returns the total bytes.
func (p *Pod) InstallMany(refs []Ref, install func(addrs []uintptr, lens []int) error) (int, error) {
	return p.installMany(refs, true, install)
}

// InstallManyChecked is InstallMany for a caller that checks each byte
// itself before it uses it (see InstallChecked): the extents are not
// hashed here, and an install error wrapping ErrStale retries the whole.
func (p *Pod) InstallManyChecked(refs []Ref, install func(addrs []uintptr, lens []int) error) (int, error) {
	return p.installMany(refs, false, install)
}

func (p *Pod) installMany(refs []Ref, hash bool, install func(addrs []uintptr, lens []int) error) (int, error) {
	if len(refs) == 1 {
		return p.install(refs[0], hash, func(a uintptr, n int) error { return install([]uintptr{a}, []int{n}) })
	}
	m, ok := p.r.(interface {
		cxl.Addresser
		Bytes() []byte
	})
	if !ok {
		return 0, fmt.Errorf("InstallMany needs a mapped region, not %T", p.r)
	}
	for _, ref := range refs {
		if ref.Desc < 0 || ref.Desc >= p.g.Descs() {
			return 0, fmt.Errorf("descriptor %d outside 0..%d", ref.Desc, p.g.Descs()-1)
		}
	}
	p.stats.Reads++
	if p.fenced() {
		return 0, ErrFenced
	}
	p.enter()
	defer p.exit()
	descs := make([]Desc, len(refs))
	addrs, lens := make([]uintptr, len(refs)), make([]int, len(refs))
attempts:
	for attempt := 0; attempt < p.opts.MaxAttempts; attempt++ {
		if attempt > 0 {
			p.stats.Retries++
		}
		total := 0
		for i, ref := range refs {
			d, err := p.validate(ref, true)
			if errors.Is(err, errRetry) {
				continue attempts
			}
			if err != nil {
				return 0, err
			}
			if hash && !p.bugs.noValidation && xxhash.Sum64(m.Bytes()[d.Off:d.Off+uint64(d.Len)]) != d.Hash {
				p.stats.BadHash++
				continue attempts
			}
			descs[i], addrs[i], lens[i] = d, m.Addr(int64(d.Off)), int(d.Len)
			total += int(d.Len)
		}
		if err := install(addrs, lens); errors.Is(err, ErrStale) && !p.bugs.noValidation {
			p.stats.BadHash++
			continue attempts
		} else if err != nil {
			return 0, err
		}
		for i, ref := range refs {
			if !p.bugs.noValidation && !p.recheck(p.g.descOff(ref.Desc), descs[i]) {
				continue attempts
			}
		}
		return total, nil
	}
	p.stats.Fallbacks++
	return 0, ErrFallback
}
