package verbs

import (
	"context"
	"errors"
	"fmt"

	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/wire"
)

// qpExchanger is implemented by rdma/tcp connections.
type qpExchanger interface {
	ExchangeQP(ctx context.Context, local wire.QPInfo) (wire.QPInfo, error)
}

// QPInfo is what two ends exchange to connect an RC queue pair; it travels
// in the qp-connect request of rdma/wire.
type QPInfo = wire.QPInfo

// Config configures the verbs backend.
type Config struct {
	// Device names the RNIC (e.g. "mlx5_0"); "" takes the first one.
	Device string
	// Port is the RNIC port (default 1); GIDIndex the GID table entry used on
	// RoCE (default 0; RoCE v2 setups usually want the IPv4-mapped entry,
	// see `show_gids`).
	Port     int
	GIDIndex int
	// QueueDepth bounds outstanding work requests per queue pair (default
	// 1024).
	QueueDepth int
	// Control carries admission, Write and Delete (publishing is a
	// two-sided control operation; only reads are one-sided) and, unless
	// Exchange is set, the queue-pair exchange (rdma/tcp's qp-connect).
	Control rdma.Transport
	// Exchange overrides how this side's QPInfo reaches the node.
	Exchange func(ctx context.Context, node rdma.NodeID, local QPInfo) (QPInfo, error)
}

// ErrNotBuilt is returned by the stub build.
var ErrNotBuilt = errors.New("this binary was built without RDMA support; rebuild with `go build -tags rdma` (needs cgo and libibverbs-dev)")

func (c *Config) defaults() {
	if c.Port == 0 {
		c.Port = 1
	}
	if c.QueueDepth <= 0 {
		c.QueueDepth = 1024
	}
}

func noDevice(detail string) error {
	return fmt.Errorf("%w: %s. This machine has no RDMA-capable NIC (no /sys/class/infiniband entries; Soft-RoCE/siw need kernel modules). Use the tcp or emu backend here; see docs/rdma.md to run verbs on real RNICs", rdma.ErrNoDevice, detail)
}
