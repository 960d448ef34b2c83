package vmstate

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/internal/atomicfile"
	"github.com/aquifer-pool/aquifer/vmmproc"
	"golang.org/x/sys/unix"
)

// Format is the record format this build writes and reads.
const Format = 1

// Phases of a record.
const (
	// PhaseWaiting: prepared, the VMM has not completed the handshake.
	PhaseWaiting = "waiting"
	// PhaseServing: the handshake is done; the VMM holds the userfaultfd.
	PhaseServing = "serving"
)

// Region is a registered guest memory region (handshake.Region on disk).
type Region struct {
	Base     uint64 `json:"base_host_virt_addr"`
	Size     uint64 `json:"size"`
	Offset   uint64 `json:"offset"`
	PageSize uint64 `json:"page_size"`
}

// Record is what serving a VM needs beyond its content source.
type Record struct {
	Format int    `json:"format"`
	Phase  string `json:"phase"`
	// BootID is the boot the record was written in.
	BootID string `json:"boot_id"`
	// VMM, UFFD, Dialect and Regions are set once the handshake is done.
	VMM     *vmmproc.Identity `json:"vmm,omitempty"`
	UFFD    *vmmproc.FileID   `json:"uffd,omitempty"`
	Dialect string            `json:"dialect,omitempty"`
	Regions []Region          `json:"regions,omitempty"`
}

// Stater is a record type that embeds Record.
type Stater interface{ State() *Record }

// State implements Stater.
func (r *Record) State() *Record { return r }

// NewRecord returns a record of this boot in phase waiting.
func NewRecord() (Record, error) {
	boot, err := vmmproc.BootID()
	return Record{Format: Format, Phase: PhaseWaiting, BootID: boot}, err
}

// Serve moves the record to phase serving after a handshake.
func (r *Record) Serve(vmm vmmproc.Identity, u vmmproc.FileID, d handshake.Dialect, regions []handshake.Region) {
	r.Phase, r.VMM, r.UFFD, r.Dialect = PhaseServing, &vmm, &u, d.String()
	r.Regions = r.Regions[:0]
	for _, g := range regions {
		r.Regions = append(r.Regions, Region{Base: g.BaseHostVirtAddr, Size: g.Size, Offset: g.Offset, PageSize: g.PageSize})
	}
}

// HandshakeRegions returns the recorded regions.
func (r *Record) HandshakeRegions() []handshake.Region {
	out := make([]handshake.Region, 0, len(r.Regions))
	for _, g := range r.Regions {
		out = append(out, handshake.Region{BaseHostVirtAddr: g.Base, Size: g.Size, Offset: g.Offset, PageSize: g.PageSize})
	}
	return out
}

// HandshakeDialect returns the recorded dialect.
func (r *Record) HandshakeDialect() (handshake.Dialect, error) {
	return handshake.ParseDialect(r.Dialect)
}

// check validates a record read from disk.
func (r *Record) check() error {
	if r.Format != Format {
		return fmt.Errorf("record format %d, this build reads %d", r.Format, Format)
	}
	switch r.Phase {
	case PhaseWaiting:
		return nil
	case PhaseServing:
	default:
		return fmt.Errorf("unknown phase %q", r.Phase)
	}
	if r.VMM == nil || r.VMM.PID <= 0 || r.UFFD == nil || r.UFFD.Ino == 0 {
		return errors.New("a serving record without its VMM or userfaultfd")
	}
	if _, err := r.HandshakeDialect(); err != nil {
		return err
	}
	return handshake.Validate(r.HandshakeRegions(), -1)
}

// ErrCorrupt marks a record or log that cannot be read.
var ErrCorrupt = errors.New("corrupt VM state")

// Save writes v atomically (not durably) to path, mode 0600.
func Save(path string, v Stater) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Replace(path, append(b, '\n'), 0o600)
}

// Load reads the record at path into v and validates it.
func Load(path string, v Stater) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return Decode(b, v)
}

// Decode parses and validates a record.
func Decode(b []byte, v Stater) error {
	if len(b) > 1<<20 {
		return fmt.Errorf("%w: record of %d bytes", ErrCorrupt, len(b))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if err := v.State().check(); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return nil
}

// Take opens the recorded VMM and takes back its userfaultfd. The VMM
// being gone is vmmproc.ErrGone.
func (r *Record) Take() (*vmmproc.Process, int, error) {
	if r.Phase != PhaseServing {
		return nil, -1, errors.New("the VM has not completed its handshake")
	}
	p, err := vmmproc.Open(*r.VMM)
	if err != nil {
		return nil, -1, err
	}
	fd, err := p.TakeUFFD(*r.UFFD)
	if err != nil {
		p.Close()
		return nil, -1, err
	}
	return p, fd, nil
}

// removeRec is one REMOVE range on disk: start and end, little endian.
const removeRec = 16

// RemoveLog appends REMOVE ranges to a VM's log.
type RemoveLog struct {
	fd int
}

// OpenRemoveLog opens (creating) the log at path for appending.
func OpenRemoveLog(path string) (*RemoveLog, error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("REMOVE log %s: %w", path, err)
	}
	return &RemoveLog{fd: fd}, nil
}

// Append records [start, end) with one write(2), which the kernel keeps if
// this process dies right after.
func (l *RemoveLog) Append(start, end uint64) error {
	var b [removeRec]byte
	binary.LittleEndian.PutUint64(b[:], start)
	binary.LittleEndian.PutUint64(b[8:], end)
	for {
		_, err := unix.Write(l.fd, b[:])
		if err == unix.EINTR {
			continue
		}
		return err
	}
}

// Close closes the log.
func (l *RemoveLog) Close() error {
	if l == nil || l.fd < 0 {
		return nil
	}
	err := unix.Close(l.fd)
	l.fd = -1
	return err
}

// ReadRemoves returns the ranges logged at path (none if it does not
// exist). A torn last record (never written whole) is ignored; a range
// that is not a range is corruption.
func ReadRemoves(path string) ([][2]uint64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<30))
	if err != nil {
		return nil, err
	}
	return DecodeRemoves(b)
}

// DecodeRemoves parses a REMOVE log.
func DecodeRemoves(b []byte) ([][2]uint64, error) {
	out := make([][2]uint64, 0, len(b)/removeRec)
	for i := 0; i+removeRec <= len(b); i += removeRec {
		s, e := binary.LittleEndian.Uint64(b[i:]), binary.LittleEndian.Uint64(b[i+8:])
		if e <= s {
			return out, fmt.Errorf("%w: REMOVE log record %d is [%#x, %#x)", ErrCorrupt, i/removeRec, s, e)
		}
		out = append(out, [2]uint64{s, e})
	}
	return out, nil
}
