package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultTimeout bounds every control-plane call that has no shorter
// deadline of its own.
const DefaultTimeout = 5 * time.Second

// ErrUnavailable is wrapped by errors of calls that could not reach etcd
// within their deadline (it is down, partitioned, or has lost quorum).
var ErrUnavailable = errors.New("control plane unavailable")

// op bounds one call by the plane's timeout (or ctx's, if shorter).
func (p *Plane) op(ctx context.Context) (context.Context, context.CancelFunc) {
	t := p.Timeout
	if t <= 0 {
		t = DefaultTimeout
	}
	return context.WithTimeout(ctx, t)
}

// fail names what failed and classifies unreachable etcd as ErrUnavailable.
func (p *Plane) fail(what string, err error) error {
	if err == nil {
		return nil
	}
	if unreachable(err) {
		return fmt.Errorf("%w: %s: etcd at %v did not answer: %v", ErrUnavailable, what, p.Endpoints, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func unreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}
