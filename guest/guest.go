package guest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/hugetlb"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/wset"
	"golang.org/x/sys/unix"
)

// Backend selects Firecracker's memory backend.
type Backend string

const (
	// BackendUffd restores through a userfaultfd handler (mem_backend Uffd).
	BackendUffd Backend = "uffd"
	// BackendFile maps the memory file MAP_PRIVATE (mem_backend File).
	BackendFile Backend = "file"
	// BackendFaaSnap maps memory the way FaaSnap does (Config.FaaSnap).
	BackendFaaSnap Backend = "faasnap"
	// BackendWarm is the lower bound: guest memory already resident (a
	// private mapping of the memory file prefaulted before the clock starts).
	BackendWarm Backend = "warm"
)

// Balloon describes one balloon inflation: a range of the memory file
// (guest memory in file-offset terms) discarded at the trace's midpoint.
type Balloon struct {
	Offset, Len uint64
}

// Config describes one restore + invocation.
type Config struct {
	// MemPath is the snapshot memory file: the File backend maps it; both
	// backends verify against it.
	MemPath string
	Backend Backend
	// Socket is the handler's socket (Uffd backend).
	Socket  string
	Dialect handshake.Dialect
	// GapStart scales Firecracker's MMIO gap (0 = 3 GiB).
	GapStart uint64
	// VCPUs is the number of vCPU threads (default 2).
	VCPUs int
	// Trace is the workload to replay.
	Trace *wset.Trace
	// ThinkScale multiplies recorded think times (0: no think time).
	ThinkScale float64
	// Balloon, if set, is inflated at the midpoint of the trace.
	Balloon *Balloon
	// DropCache drops the memory file's page cache before a File restore.
	DropCache bool
	// FaaSnap is the mapping plan of the faasnap backend.
	FaaSnap *FaaSnapPlan
	// NoVerify skips byte verification (for pure timing runs).
	NoVerify bool
	// Resumed, if set, is waited on after the restore and before the vCPUs
	// run: the orchestrator's PATCH /vm Resumed.
	Resumed func(ctx context.Context) error
	// Measured, if set, is called once the measured run is over (the
	// trace replayed, Report.EndToEnd taken) and before the whole memory
	// is verified and its residency read: a benchmark of concurrent VMs
	// holds each VM there until every VM's measured run is over, so that
	// one VM's verification (which faults in all of its memory) does not
	// run on the others' clocks.
	Measured func(ctx context.Context)
	// Prepare, if set, is called first on the restore's clock (before the
	// mappings and the handshake) and returns the handler socket, which
	// replaces Socket: the orchestrator's call to the pager daemon on the
	// cold-start path (PUT /v1/vms/ID). Its time is Report.Prepare.
	Prepare func(ctx context.Context) (socket string, err error)
	// PageSize is the guest's page size: 4096, or 2 MiB for a guest
	// backed by hugetlbfs pages (Firecracker's huge_pages "2M"; Uffd
	// backend only, see huge.go). 0 means the trace's page size.
	PageSize uint64
	// RefPath, if set, is the file verification compares against instead
	// of MemPath (same content; e.g. a DRAM copy, so verifying never reads
	// the storage under test).
	RefPath string
	// TouchTimes records how long each page's first access in the trace
	// took on its vCPU (the fault, as the guest sees it): Report.Touches.
	TouchTimes bool
	// NoFaults touches every traced page once before the clock starts
	// (warm backend only): the replay then takes no fault at all, the
	// lower bound of any restore.
	NoFaults bool
}

// Touch is the time a page's first access took.
type Touch struct {
	Page uint64 `json:"p"`
	NS   int64  `json:"ns"`
	CPU  int    `json:"cpu"`
}

// Residency is the guest memory resident at the end of the replay, from
// /proc/self/smaps over the guest regions only.
type Residency struct {
	// Private is anonymous memory (copied-in, zero-filled or CoW pages):
	// this VM's own DRAM.
	Private uint64 `json:"private_bytes"`
	// FileMapped is page-cache memory mapped into the guest (shared with
	// every VM and the page cache).
	FileMapped uint64 `json:"file_mapped_bytes"`
}

// MeasuredLine is what aquifer guest run --hold-verify prints on standard
// error once the measured run is over (Config.Measured).
const MeasuredLine = "guest: measured"

// Report is the outcome of one run.
type Report struct {
	Backend     Backend       `json:"backend"`
	Dialect     string        `json:"dialect,omitempty"`
	Regions     int           `json:"regions"`
	VCPUs       int           `json:"vcpus"`
	Accesses    int           `json:"accesses"`
	Pages       int           `json:"pages"`
	Restore     time.Duration `json:"restore_ns"`
	FirstTouch  time.Duration `json:"first_touch_ns"`
	EndToEnd    time.Duration `json:"end_to_end_ns"`
	Verified    int           `json:"verified_pages"`
	Mismatches  int           `json:"mismatches"`
	FirstError  string        `json:"first_error,omitempty"`
	BalloonDone bool          `json:"balloon_done"`
	// PageSize is the guest page size (2 MiB for a hugetlbfs guest).
	PageSize uint64 `json:"page_size"`
	// WholePagesVerified counts guest pages larger than the trace's
	// compared whole, every byte, after the replay (huge.go).
	WholePagesVerified int `json:"whole_pages_verified,omitempty"`
	// BalloonReclaimed is the memory the balloon's discard really freed
	// (less than the balloon on a 2 MiB guest: only whole huge pages).
	BalloonReclaimed uint64 `json:"balloon_reclaimed_bytes,omitempty"`
	// ResumeWait is the time between the end of the restore and the
	// resume (waiting for the handler's hot set: Config.Resumed).
	ResumeWait time.Duration `json:"resume_wait_ns,omitempty"`
	// Prepare is the time Config.Prepare took, the first part of Restore.
	Prepare time.Duration `json:"prepare_ns,omitempty"`
	Touches []Touch       `json:"touches,omitempty"`
	// VCPUEnd is when each vCPU made its last access, since the start of
	// the restore: the largest is on the critical path.
	VCPUEnd []time.Duration `json:"vcpu_end_ns,omitempty"`
	// VCPUCPU is each vCPU thread's CPU time during the replay (user and
	// system: think-time spinning, verification, faults the kernel
	// resolves), not its waits for a handler or its sleeps.
	VCPUCPU  []time.Duration `json:"vcpu_cpu_ns,omitempty"`
	Resident *Residency      `json:"resident,omitempty"`
	// MaxAccess is the longest single access of the replay (a fault
	// waiting for its handler, at worst): how long a vCPU stalled, from
	// MaxAccessAt.
	MaxAccess   time.Duration `json:"max_access_ns"`
	MaxAccessAt time.Time     `json:"max_access_at"`
}

type mapped struct {
	Region
	m    *offheap.Mapping
	addr uintptr
}

// vm is a restored VM.
type vm struct {
	cfg     Config
	ps      uint64 // the trace's page size: the unit of accesses and checks
	gps     uint64 // the guest's page size (mapping, handshake, faults)
	regions []*mapped
	ref     *offheap.Mapping // snapshot content for verification
	u       *uffd.FD
	conn    *net.UnixConn

	bgDone   chan struct{} // background paging (faasnap)
	populate bool          // prefault the file mapping (warm)

	firstIdx map[int]bool // trace indices of first accesses (TouchTimes)

	ballooned atomic.Bool
	discarded [][2]uint64 // memory-file ranges the balloon really discarded
	reclaimed uint64
	shadowMu  sync.Mutex
	shadow    map[uint64]map[uint64]uint64 // page -> slot offset -> value written
}

// Run restores a VM as configured, replays the trace and reports.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Trace == nil {
		return nil, errors.New("no trace to replay")
	}
	if cfg.VCPUs <= 0 {
		cfg.VCPUs = 2
	}
	ps := uint64(cfg.Trace.PageSize)
	if ps == 0 {
		ps = handshake.PageSize4K
	}
	gps, err := guestPageSize(cfg, ps)
	if err != nil {
		return nil, err
	}
	refPath := cfg.MemPath
	if cfg.RefPath != "" {
		refPath = cfg.RefPath
	}
	ref, size, err := offheap.OpenFileRO(refPath)
	if err != nil {
		return nil, fmt.Errorf("memory file: %w", err)
	}
	if cfg.RefPath != "" {
		if st, err := os.Stat(cfg.MemPath); err != nil || st.Size() != size {
			return nil, fmt.Errorf("memory file %s and reference %s differ in size (%v)", cfg.MemPath, cfg.RefPath, err)
		}
	}
	if cfg.NoFaults && cfg.Backend != BackendWarm {
		return nil, errors.New("no-faults needs the warm backend")
	}
	defer ref.Unmap()
	if size == 0 || uint64(size)%gps != 0 {
		return nil, fmt.Errorf("memory file %s: size %d is not a non-zero multiple of the %d-byte guest page size", cfg.MemPath, size, gps)
	}
	layout, err := FirecrackerLayout(uint64(size), cfg.GapStart, gps)
	if err != nil {
		return nil, err
	}
	if err := cfg.Trace.Validate(); err != nil {
		return nil, err
	}
	pages := uint64(size) / ps
	for i, a := range cfg.Trace.Accesses {
		if a.Page >= pages {
			return nil, fmt.Errorf("trace access %d touches page %d beyond the %d-page memory file", i, a.Page, pages)
		}
	}
	v := &vm{cfg: cfg, ps: ps, gps: gps, ref: ref, shadow: map[uint64]map[uint64]uint64{}}
	defer v.close()

	rep := &Report{Backend: cfg.Backend, Regions: len(layout), VCPUs: cfg.VCPUs, Accesses: len(cfg.Trace.Accesses), PageSize: gps}
	if cfg.Backend == BackendWarm {
		v.populate = true
		if gps != handshake.PageSize4K {
			err = v.restoreWarmHuge(layout)
		} else {
			err = v.restoreFile(layout)
		}
		if err != nil {
			return nil, err
		}
		if cfg.NoFaults {
			v.touchAll()
		}
	}
	start := time.Now()
	if cfg.Prepare != nil {
		sock, err := cfg.Prepare(ctx)
		if err != nil {
			return nil, err
		}
		v.cfg.Socket = sock
		rep.Prepare = time.Since(start)
	}
	if cfg.Backend == BackendUffd && v.cfg.Socket == "" {
		return nil, errors.New("the uffd backend needs a handler socket")
	}
	switch cfg.Backend {
	case BackendUffd:
		rep.Dialect = cfg.Dialect.String()
		err = v.restoreUffd(layout)
	case BackendFile:
		err = v.restoreFile(layout)
	case BackendFaaSnap:
		err = v.restoreFaaSnap(layout)
	case BackendWarm:
	default:
		err = fmt.Errorf("unknown backend %q (want uffd or file)", cfg.Backend)
	}
	if err != nil {
		return nil, err
	}
	rep.Restore = time.Since(start)
	if cfg.Resumed != nil {
		if err := cfg.Resumed(ctx); err != nil {
			return nil, fmt.Errorf("waiting for resume: %w", err)
		}
		rep.ResumeWait = time.Since(start) - rep.Restore
	}
	if err := v.replay(ctx, start, rep); err != nil {
		return rep, err
	}
	rep.EndToEnd = time.Since(start)
	if cfg.Measured != nil {
		cfg.Measured(ctx)
	}
	v.verifyWhole(rep)
	rep.Resident = v.residency()
	if rep.Mismatches > 0 {
		return rep, fmt.Errorf("%d pages did not match the snapshot; first: %s", rep.Mismatches, rep.FirstError)
	}
	return rep, nil
}

func (v *vm) close() {
	if v.bgDone != nil {
		<-v.bgDone
	}
	for _, r := range v.regions {
		r.m.Unmap()
	}
	if v.conn != nil {
		v.conn.Close()
	}
	if v.u != nil {
		v.u.Close()
	}
}

func (v *vm) restoreUffd(layout []Region) error {
	for _, r := range layout {
		m, err := mapAnon(r.Size, v.gps)
		if err != nil {
			return err
		}
		v.regions = append(v.regions, &mapped{Region: r, m: m, addr: m.Addr()})
	}
	var err error
	if v.cfg.Dialect == handshake.DialectV1_1 {
		v.u, err = uffd.New()
	} else {
		v.u, err = uffd.NewDevice()
	}
	if err != nil {
		return err
	}
	var features uint64
	if v.cfg.Dialect >= handshake.DialectV1_12 || v.cfg.Balloon != nil {
		features = uffd.FeatureEventRemove
	}
	if _, err := v.u.API(features); err != nil {
		return err
	}
	wire := make([]handshake.Region, 0, len(v.regions))
	for _, r := range v.regions {
		if _, err := v.u.Register(r.addr, uintptr(r.Size), uffd.RegisterModeMissing); err != nil {
			return err
		}
		wire = append(wire, handshake.Region{BaseHostVirtAddr: uint64(r.addr), Size: r.Size, Offset: r.FileOffset, PageSize: v.gps})
	}
	conn, err := handshake.Send(v.cfg.Socket, wire, v.cfg.Dialect, v.u.Fd())
	if err != nil {
		return err
	}
	if v.cfg.Dialect.KeepsSocketOpen() {
		v.conn = conn
	} else {
		conn.Close()
	}
	return nil
}

func (v *vm) restoreFile(layout []Region) error {
	f, err := os.Open(v.cfg.MemPath)
	if err != nil {
		return err
	}
	defer f.Close()
	if v.cfg.DropCache {
		unix.Fdatasync(int(f.Fd()))
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			return fmt.Errorf("dropping page cache of %s: %w", v.cfg.MemPath, err)
		}
	}
	flags := unix.MAP_PRIVATE | unix.MAP_NORESERVE
	if v.populate {
		flags |= unix.MAP_POPULATE
	}
	for _, r := range layout {
		m, err := offheap.File(f, int64(r.FileOffset), int(r.Size), unix.PROT_READ|unix.PROT_WRITE, flags)
		if err != nil {
			return err
		}
		v.regions = append(v.regions, &mapped{Region: r, m: m, addr: m.Addr()})
	}
	return nil
}

// at maps memory-file offset off to its host address and the bytes left
// in its region; ok is false outside guest memory.
func (v *vm) at(off uint64) (addr uintptr, room uint64, ok bool) {
	for _, r := range v.regions {
		if off >= r.FileOffset && off < r.FileOffset+r.Size {
			return r.addr + uintptr(off-r.FileOffset), r.FileOffset + r.Size - off, true
		}
	}
	return 0, 0, false
}

// hostAddr returns the host address of file page p.
func (v *vm) hostAddr(p uint64) (uintptr, bool) {
	addr, _, ok := v.at(p * v.ps)
	return addr, ok
}

type cpuResult struct {
	verified   int
	mismatches int
	firstErr   string
	firstTouch time.Time
	lastTouch  time.Time
	touches    []Touch
	cpu        time.Duration // the vCPU thread's CPU time in the replay
	maxAccess  time.Duration
	maxAt      time.Time
}

func (v *vm) replay(ctx context.Context, start time.Time, rep *Report) error {
	acc := v.cfg.Trace.Accesses
	n := v.cfg.VCPUs
	mid := len(acc)
	if v.cfg.Balloon != nil {
		mid = len(acc) / 2
	}
	phases := [2][][]int{make([][]int, n), make([][]int, n)}
	for i, a := range acc {
		ph := 0
		if i >= mid {
			ph = 1
		}
		c := int(a.CPU) % n
		phases[ph][c] = append(phases[ph][c], i)
	}
	distinct := map[uint64]struct{}{}
	for _, a := range acc {
		distinct[a.Page] = struct{}{}
	}
	rep.Pages = len(distinct)

	if v.cfg.TouchTimes {
		v.firstIdx = map[int]bool{}
		seen := map[uint64]bool{}
		for i, a := range acc {
			if !seen[a.Page] {
				seen[a.Page] = true
				v.firstIdx[i] = true
			}
		}
	}
	results := make([]cpuResult, n)
	for ph := 0; ph < 2; ph++ {
		if ph == 1 && v.cfg.Balloon != nil {
			if err := v.inflate(*v.cfg.Balloon); err != nil {
				return err
			}
			rep.BalloonDone = true
		}
		var wg sync.WaitGroup
		for c := 0; c < n; c++ {
			wg.Add(1)
			go func(c int) {
				defer wg.Done()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				t0 := threadCPU()
				v.runCPU(ctx, c, phases[ph][c], &results[c])
				results[c].cpu += threadCPU() - t0
			}(c)
		}
		wg.Wait()
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	var first time.Time
	for _, r := range results {
		rep.Verified += r.verified
		rep.Mismatches += r.mismatches
		if rep.FirstError == "" {
			rep.FirstError = r.firstErr
		}
		if r.maxAccess > rep.MaxAccess {
			rep.MaxAccess, rep.MaxAccessAt = r.maxAccess, r.maxAt
		}
		if !r.firstTouch.IsZero() && (first.IsZero() || r.firstTouch.Before(first)) {
			first = r.firstTouch
		}
		rep.Touches = append(rep.Touches, r.touches...)
		var end time.Duration
		if !r.lastTouch.IsZero() {
			end = r.lastTouch.Sub(start)
		}
		rep.VCPUEnd = append(rep.VCPUEnd, end)
		rep.VCPUCPU = append(rep.VCPUCPU, r.cpu)
	}
	if !first.IsZero() {
		rep.FirstTouch = first.Sub(start)
	}
	return nil
}

func (v *vm) runCPU(ctx context.Context, cpu int, idx []int, res *cpuResult) {
	acc := v.cfg.Trace.Accesses
	var prev time.Duration
	if len(idx) > 0 {
		prev = acc[idx[0]].T
	}
	scratch := make([]byte, v.ps)
	for k, i := range idx {
		if k&63 == 0 && ctx.Err() != nil {
			return
		}
		a := acc[i]
		if v.cfg.ThinkScale > 0 && a.T > prev {
			spin(time.Duration(float64(a.T-prev) * v.cfg.ThinkScale))
		}
		prev = a.T
		addr, _ := v.hostAddr(a.Page)
		page := offheap.At(addr, int(v.ps))
		timed := v.firstIdx[i]
		var stall time.Duration
		t0 := time.Now()
		if a.Kind&wset.Write != 0 {
			slot := uint64(cpu*8) % v.ps
			val := a.Page*0x9E3779B97F4A7C15 ^ uint64(i+1)
			w := (*uint64)(unsafe.Pointer(&page[slot]))
			// A write fault first, without changing content (a locked
			// add of zero), then the visible store with its shadow entry
			// under the lock that verification holds while comparing.
			atomic.AddUint64(w, 0)
			if timed {
				stall = time.Since(t0)
			}
			v.shadowMu.Lock()
			atomic.StoreUint64(w, val)
			s := v.shadow[a.Page]
			if s == nil {
				s = map[uint64]uint64{}
				v.shadow[a.Page] = s
			}
			s[slot] = val
			v.shadowMu.Unlock()
		} else {
			atomic.LoadUint64((*uint64)(unsafe.Pointer(&page[0]))) // the load faults the page in
			if timed {
				stall = time.Since(t0)
			}
		}
		if d := time.Since(t0); d > res.maxAccess {
			res.maxAccess, res.maxAt = d, t0
		}
		if res.firstTouch.IsZero() {
			res.firstTouch = time.Now()
		}
		if timed {
			res.touches = append(res.touches, Touch{Page: a.Page, NS: int64(stall), CPU: cpu})
		}
		if v.cfg.NoVerify {
			res.lastTouch = time.Now()
			continue
		}
		if err := v.verify(a.Page, page, scratch); err != nil {
			res.mismatches++
			if res.firstErr == "" {
				res.firstErr = err.Error()
			}
		} else {
			res.verified++
		}
		res.lastTouch = time.Now()
	}
}

// verify compares a guest page with what it must hold: the snapshot page (or
// zeros after a balloon discarded it) overlaid with this run's own writes.
func (v *vm) verify(p uint64, got, scratch []byte) error {
	var want []byte
	if v.inBalloon(p) {
		clear(scratch)
		want = scratch
	} else {
		want = v.ref.B[p*v.ps : (p+1)*v.ps]
	}
	v.shadowMu.Lock()
	defer v.shadowMu.Unlock()
	s := v.shadow[p]
	if len(s) > 0 {
		if &want[0] != &scratch[0] {
			copy(scratch, want)
			want = scratch
		}
		for off, val := range s {
			binary.LittleEndian.PutUint64(want[off:], val)
		}
	}
	if bytes.Equal(got, want) {
		return nil
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("page %d byte %d: got %#02x want %#02x", p, i, got[i], want[i])
		}
	}
	return nil
}

func (v *vm) inBalloon(p uint64) bool {
	if !v.ballooned.Load() {
		return false
	}
	off := p * v.ps
	for _, d := range v.discarded {
		if off >= d[0] && off+v.ps <= d[1] {
			return true
		}
	}
	return false
}

// inflate discards a balloon range the way Firecracker does. All vCPUs are
// stopped (phase barrier), as a guest balloon driver only gives away pages
// nothing uses.
func (v *vm) inflate(b Balloon) error {
	if b.Offset%v.ps != 0 || b.Len%v.ps != 0 || b.Len == 0 {
		return fmt.Errorf("balloon range [%d,+%d) not page aligned", b.Offset, b.Len)
	}
	if v.gps != handshake.PageSize4K {
		return v.inflateHuge(b)
	}
	v.discarded = [][2]uint64{{b.Offset, b.Offset + b.Len}}
	v.reclaimed = b.Len
	for off := b.Offset; off < b.Offset+b.Len; {
		addr, room, ok := v.at(off)
		if !ok {
			return fmt.Errorf("balloon offset %d outside guest memory", off)
		}
		n := min(b.Offset+b.Len-off, room)
		switch v.cfg.Backend {
		case BackendUffd:
			if err := unix.Madvise(offheap.At(addr, int(n)), unix.MADV_DONTNEED); err != nil {
				return fmt.Errorf("balloon madvise: %w", err)
			}
		case BackendFile, BackendFaaSnap, BackendWarm:
			// MADV_DONTNEED on a private file mapping would bring the file
			// content back; Firecracker maps anonymous memory over it.
			_, _, errno := unix.Syscall6(unix.SYS_MMAP, addr, uintptr(n), unix.PROT_READ|unix.PROT_WRITE,
				unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED|unix.MAP_NORESERVE, ^uintptr(0), 0)
			if errno != 0 {
				return fmt.Errorf("balloon remap: %w", errno)
			}
		}
		off += n
	}
	v.shadowMu.Lock()
	for p := range v.shadow {
		if off := p * v.ps; off >= b.Offset && off+v.ps <= b.Offset+b.Len {
			delete(v.shadow, p)
		}
	}
	v.shadowMu.Unlock()
	v.ballooned.Store(true)
	return nil
}

// touchAll reads every traced page and write-faults every page the trace
// writes, without changing content, so the replay takes no fault.
func (v *vm) touchAll() {
	for _, a := range v.cfg.Trace.Accesses {
		addr, ok := v.hostAddr(a.Page)
		if !ok {
			continue
		}
		w := (*uint64)(unsafe.Pointer(&offheap.At(addr, 8)[0]))
		if a.Kind&wset.Write != 0 {
			atomic.AddUint64(w, 0)
		} else {
			atomic.LoadUint64(w)
		}
	}
}

// residency sums Rss and Anonymous of the guest regions' VMAs in
// /proc/self/smaps (nil if it cannot be read).
func (v *vm) residency() *Residency {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return nil
	}
	spans := make([][2]uint64, len(v.regions))
	for i, m := range v.regions {
		spans[i] = [2]uint64{uint64(m.addr), uint64(m.addr) + m.Size}
	}
	r := residencyOf(b, spans)
	return &r
}

// residencyOf sums the smaps text b over the mappings that lie inside one
// of spans ([start, end) addresses). It runs after every VM, over one smaps
// entry per mapping: a guest whose pager left zero runs to the kernel has
// many (every UFFDIO_UNREGISTER splits its region), so it is a plain byte
// scan (fmt's scanning cost tens of milliseconds of CPU when the pager
// still unregistered every short run).
func residencyOf(b []byte, spans [][2]uint64) Residency {
	var r Residency
	in := false
	for line := range bytes.Lines(b) {
		if lo, hi, ok := mappingRange(line); ok {
			in = false
			for _, s := range spans {
				if s[0] <= lo && hi <= s[1] {
					in = true
					break
				}
			}
			continue
		}
		if !in {
			continue
		}
		if kb, ok := smapsField(line, "Rss:"); ok {
			r.FileMapped += kb << 10
		} else if kb, ok := smapsField(line, "Anonymous:"); ok {
			r.Private += kb << 10
			r.FileMapped -= kb << 10
		}
	}
	return r
}

// mappingRange parses the "lo-hi " that starts an smaps mapping line.
func mappingRange(line []byte) (lo, hi uint64, ok bool) {
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return 0, 0, false
	}
	a, z, found := bytes.Cut(line[:sp], []byte{'-'})
	if !found {
		return 0, 0, false
	}
	lo, err1 := strconv.ParseUint(string(a), 16, 64)
	hi, err2 := strconv.ParseUint(string(z), 16, 64)
	return lo, hi, err1 == nil && err2 == nil
}

// smapsField parses a "Name:   N kB" line.
func smapsField(line []byte, name string) (uint64, bool) {
	rest, ok := bytes.CutPrefix(line, []byte(name))
	if !ok {
		return 0, false
	}
	rest, ok = bytes.CutSuffix(bytes.TrimSpace(rest), []byte(" kB"))
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(string(bytes.TrimSpace(rest)), 10, 64)
	return n, err == nil
}

// threadCPU is the calling OS thread's CPU time.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// spin busy-waits d: think time is guest computation, which occupies a CPU.
func spin(d time.Duration) {
	if d <= 0 {
		return
	}
	end := time.Now().Add(d)
	if d > 2*time.Millisecond {
		time.Sleep(d - time.Millisecond)
	}
	for time.Now().Before(end) {
	}
}

// mapAnon maps guest memory the way Firecracker does: anonymous, private,
// MAP_NORESERVE, and from hugetlb pages for a 2 MiB guest.
func mapAnon(size, pageSize uint64) (*offheap.Mapping, error) {
	flags := unix.MAP_NORESERVE
	if pageSize == hugetlb.PageSize {
		flags |= hugetlb.MapFlags
	}
	return offheap.Anon(int(size), unix.PROT_READ|unix.PROT_WRITE, flags)
}
