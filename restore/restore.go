package restore

import (
	"context"
	"errors"
	"time"

	"github.com/aquifer-pool/aquifer/snapimage"
)

// Snapshot is an opened snapshot: its image metadata and where its
// segments come from. It is immutable once returned by an Opener and may be
// shared by concurrent restores.
type Snapshot struct {
	Name  string
	Image *snapimage.Image
	// Hot yields the hot segment (nil when the image has no hot pages).
	Hot HotSource
	// HotFallback, if set, is tried when Hot fails or returns a page that
	// does not match its digest (the demoted copy on RDMA).
	HotFallback HotSource
	// Cold reads the cold segment (nil when the image has no cold pages).
	Cold ColdSource
	// Version names the published version this was opened at (a pool: its
	// catalog entry's publish time; empty for image files). A daemon
	// records it with Image.ID() for every VM it serves, so that a
	// successor re-adopting the VM serves exactly the same image.
	Version string
}

// Opener opens published snapshots for restores.
type Opener interface {
	// Open resolves name and returns its sources. Errors wrap ErrNotFound,
	// ErrInvalid or ErrUnavailable where they apply.
	Open(ctx context.Context, name string) (*Snapshot, error)
	// Restored records that a restore of name completed (eviction and
	// promotion order). It must not block the caller for long.
	Restored(ctx context.Context, name string)
}

// Catalog is implemented by openers that accept new snapshots.
type Catalog interface {
	// Publish puts the image file at path into the pool as name.
	Publish(ctx context.Context, path, name string) (*Info, error)
	Remove(ctx context.Context, name string) error
	List(ctx context.Context) ([]*Info, error)
}

// Tiering is implemented by catalogs that move hot sets between tiers on
// an operator's request (this host's pod: its CXL region or the RDMA copy).
type Tiering interface {
	Promote(ctx context.Context, name string) error
	Demote(ctx context.Context, name string) error
}

// MemTier is implemented by catalogs whose memory tier an operator can
// drain a node of.
type MemTier interface {
	Drain(ctx context.Context, addr string) error
}

// Info describes a published snapshot.
type Info struct {
	Name      string
	MemBytes  uint64
	Pages     uint64
	ZeroPages uint64
	HotPages  uint64
	ColdPages uint64
	HotBytes  uint64
	ColdBytes uint64
	// HotTier is where restores read the hot set: "cxl" when it is placed
	// in the pod's CXL region, else "rdma" (its copy on the memory nodes).
	HotTier   string
	Published time.Time
}

// Errors that cross the seam. Implementations wrap them with detail.
var (
	// ErrNotFound: no such snapshot.
	ErrNotFound = errors.New("not found")
	// ErrExists: the name is taken.
	ErrExists = errors.New("already exists")
	// ErrInvalid: the request is malformed (a bad name, a file that is not
	// an Aquifer image, a truncated or corrupt image).
	ErrInvalid = errors.New("invalid")
	// ErrUnavailable: a tier or the control plane cannot be reached now;
	// retrying later may succeed.
	ErrUnavailable = errors.New("unavailable")
)

// Mark returns err classified as kind (one of the errors above): its text
// is err's, and errors.Is matches both kind and err's own chain.
func Mark(kind, err error) error {
	if err == nil || errors.Is(err, kind) {
		return err
	}
	return &marked{kind: kind, err: err}
}

type marked struct{ kind, err error }

func (m *marked) Error() string   { return m.err.Error() }
func (m *marked) Unwrap() []error { return []error{m.kind, m.err} }
