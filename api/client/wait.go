package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aquifer-pool/aquifer/api"
)

// WaitServing asks the daemon for its VMs until it answers, for at most
// timeout, and returns them. It asks again while nothing listens on the
// socket yet (a daemon starting: the socket appears once the daemon
// serves), while the daemon answers 503 (handing its VMs to a successor)
// and after an attempt that timed out; any other error ends the wait at
// once. Every attempt has its own deadline, never past the wait's.
// A timeout of 0 asks once (bounded by Options.Timeout).
func (c *Client) WaitServing(ctx context.Context, timeout time.Duration) ([]api.VM, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		attempt := c.o.Timeout
		if timeout > 0 {
			attempt = max(min(left, attempt), time.Millisecond)
		}
		var l []api.VM
		err := c.do(ctx, attempt, "GET", "/vms", nil, &l)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, api.ErrUnavailable) && !errors.Is(err, api.ErrTimeout) {
			return nil, err
		}
		if timeout <= 0 {
			return nil, err
		}
		if time.Until(deadline) <= 0 {
			return nil, fmt.Errorf("still no answer after %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(min(100*time.Millisecond, max(time.Until(deadline), 0))):
		}
	}
}
