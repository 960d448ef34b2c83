package baseline

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/internal/atomicfile"

	"github.com/aquifer-pool/aquifer/handler"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/wset"
	"golang.org/x/sys/unix"
)

const reapMagic = "AQREAPW1"

// BuildREAP writes REAP's working-set file for mem and the recorded trace:
// a header (magic, page size, page count), the sorted page indices, then the
// pages' contents in the same (offset) order. It is written atomically.
func BuildREAP(memPath string, rec *wset.Trace, out string) error {
	ps := uint64(rec.PageSize)
	pages := make([]uint64, 0, len(rec.Accesses))
	for _, a := range rec.FirstTouches() {
		pages = append(pages, a.Page)
	}
	slices.Sort(pages)
	mem, err := os.Open(memPath)
	if err != nil {
		return err
	}
	defer mem.Close()
	hdr := make([]byte, 24)
	copy(hdr, reapMagic)
	binary.LittleEndian.PutUint64(hdr[8:], ps)
	binary.LittleEndian.PutUint64(hdr[16:], uint64(len(pages)))
	idx := make([]byte, 8*len(pages))
	for i, p := range pages {
		binary.LittleEndian.PutUint64(idx[8*i:], p)
	}
	return atomicfile.Write(out, 0o644, func(w io.Writer) error {
		if _, err := w.Write(append(hdr, idx...)); err != nil {
			return err
		}
		buf := make([]byte, ps)
		for _, p := range pages {
			if _, err := mem.ReadAt(buf, int64(p*ps)); err != nil && err != io.EOF {
				return fmt.Errorf("reading page %d of %s: %w", p, memPath, err)
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
		}
		return nil
	})
}

// REAPSource serves a VM the way vHive's REAP does: on the first fault it
// installs the whole prefetched working set, then serves every other page
// from the memory file.
type REAPSource struct {
	mem   *handler.MemFile
	ps    uint64
	pages []uint64
	data  *offheap.Mapping
	once  sync.Once
	h     *handler.Handler
	// Installed counts WS pages installed at the first fault.
	Installed atomic.Uint64
	// Fetch is how long OpenREAP took to read the WS file (open, header,
	// index and pages): vHive's FetchState, which it runs inside the
	// timed snapshot load, concurrently with Firecracker's own.
	Fetch time.Duration
}

// OpenREAP reads the WS file completely into memory (vHive's FetchState)
// and maps the memory file for the rest; REAPSource.Fetch is how long the
// WS file's reads took.
func OpenREAP(memPath, wsPath string) (*REAPSource, error) {
	t0 := time.Now()
	f, err := os.Open(wsPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	hdr := make([]byte, 24)
	if _, err := io.ReadFull(f, hdr); err != nil || string(hdr[:8]) != reapMagic {
		return nil, fmt.Errorf("%s is not a REAP working-set file", wsPath)
	}
	ps := binary.LittleEndian.Uint64(hdr[8:])
	n := binary.LittleEndian.Uint64(hdr[16:])
	if ps != 4096 && ps != 2<<20 || n > 1<<28 {
		return nil, fmt.Errorf("%s: bad header (page size %d, %d pages)", wsPath, ps, n)
	}
	idx := make([]byte, 8*n)
	if _, err := io.ReadFull(f, idx); err != nil {
		return nil, fmt.Errorf("%s: truncated index: %w", wsPath, err)
	}
	s := &REAPSource{ps: ps, pages: make([]uint64, n)}
	for i := range s.pages {
		s.pages[i] = binary.LittleEndian.Uint64(idx[8*i:])
	}
	if n > 0 {
		if s.data, err = offheap.Anon(int(n*ps), unix.PROT_READ|unix.PROT_WRITE, 0); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(f, s.data.B); err != nil {
			s.data.Unmap()
			return nil, fmt.Errorf("%s: truncated pages: %w", wsPath, err)
		}
	}
	s.Fetch = time.Since(t0)
	if s.mem, err = handler.OpenMemFile(memPath); err != nil {
		s.data.Unmap()
		return nil, err
	}
	for _, p := range s.pages {
		if (p+1)*ps > uint64(s.mem.Size()) {
			s.Close()
			return nil, fmt.Errorf("%s: page %d beyond the memory file", wsPath, p)
		}
	}
	return s, nil
}

// WSFetchSummary is how a REAP handler's summary line (`aquifer handle
// --reap-ws`) reports the fetch time: "ws fetch N ns".
func WSFetchSummary(fetch time.Duration) string {
	return fmt.Sprintf("ws fetch %d ns", fetch.Nanoseconds())
}

var wsFetchRE = regexp.MustCompile(`ws fetch (\d+) ns`)

// ParseWSFetch finds the fetch time WSFetchSummary wrote in a handler's
// output (false if there is none).
func ParseWSFetch(out string) (time.Duration, bool) {
	m := wsFetchRE.FindStringSubmatch(out)
	if m == nil {
		return 0, false
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(n), true
}

// PageSize is the page size of the working set's pages: it must be the
// guest's (a 2 MiB guest needs a file built with --page-size 2MiB).
func (s *REAPSource) PageSize() uint64 { return s.ps }

// Attach gives the source the handler it installs through.
func (s *REAPSource) Attach(h *handler.Handler) { s.h = h }

// Size implements handler.Source.
func (s *REAPSource) Size() int64 { return s.mem.Size() }

// Inline implements handler.Inliner: the first fault blocks for the whole
// install, so it goes to a worker.
func (s *REAPSource) Inline(off, ps uint64) bool { return s.Installed.Load() > 0 || len(s.pages) == 0 }

// Page implements handler.Source.
func (s *REAPSource) Page(off, ps uint64) (uintptr, bool, func(), error) {
	s.once.Do(s.installAll)
	return s.mem.Page(off, ps)
}

func (s *REAPSource) installAll() {
	if s.h == nil || len(s.pages) == 0 {
		return
	}
	base := s.data.Addr()
	// One UFFDIO_COPY per contiguous run (vHive's legacy path copies per
	// run; its current path per page).
	i := 0
	for i < len(s.pages) {
		j := i + 1
		for j < len(s.pages) && s.pages[j] == s.pages[j-1]+1 {
			j++
		}
		n, _ := s.h.Install(s.pages[i]*s.ps, base+uintptr(uint64(i)*s.ps), uint64(j-i))
		s.Installed.Add(n)
		i = j
	}
}

// Close releases the source.
func (s *REAPSource) Close() error {
	if s.data != nil {
		s.data.Unmap()
	}
	if s.mem != nil {
		s.mem.Close()
	}
	return nil
}
