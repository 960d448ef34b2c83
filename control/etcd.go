package control

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Plane is a connection to the control plane.
type Plane struct {
	Client *clientv3.Client
	// Endpoints clients use to reach etcd.
	Endpoints []string
	// Timeout bounds each call (default DefaultTimeout).
	Timeout time.Duration
}

// Connect connects to an external etcd cluster.
func Connect(ctx context.Context, endpoints []string) (*Plane, error) {
	// The client's own logger would print every retry as JSON on stderr;
	// errors reach callers (and their logs) through return values instead.
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Context: ctx,
		Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("control: connecting to etcd %v: %w", endpoints, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Get(cctx, "/aquifer/ping"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("control: etcd %v not reachable: %w", endpoints, err)
	}
	return &Plane{Client: cli, Endpoints: endpoints}, nil
}

// Close disconnects.
func (p *Plane) Close() error { return p.Client.Close() }
