//go:build !(rdma && cgo)

package verbs

import "github.com/aquifer-pool/aquifer/rdma"

// Endpoint is the node side of the backend (see the rdma build).
type Endpoint struct{}

// NewEndpoint fails with ErrNotBuilt in this build.
func NewEndpoint(cfg Config) (*Endpoint, error) { return nil, ErrNotBuilt }

// Expose fails with ErrNotBuilt.
func (*Endpoint) Expose(buf []byte) (uint32, error) { return 0, ErrNotBuilt }

// Accept fails with ErrNotBuilt.
func (*Endpoint) Accept(remote QPInfo) (QPInfo, func() error, error) {
	return QPInfo{}, nil, ErrNotBuilt
}

// Close does nothing.
func (*Endpoint) Close() error { return nil }

// Built reports whether the libibverbs backend is compiled in.
const Built = false

// Devices lists RDMA devices; the stub build has none to offer.
func Devices() ([]string, error) { return nil, ErrNotBuilt }

// New opens the backend; the stub build always fails with ErrNotBuilt.
func New(cfg Config) (rdma.Transport, error) { return nil, ErrNotBuilt }
