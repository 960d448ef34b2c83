package control

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"sync"
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
	// Logger receives the registrations' lease losses and re-creations
	// (default slog.Default()).
	Logger *slog.Logger
	// Reregistered, if set, is called each time a registration whose
	// lease was lost has been re-created: kind is "host" or "memnode".
	Reregistered func(kind, id string)

	// listed holds the entries ListSnapshots last decoded, by name: an
	// entry whose modification revision is unchanged is not decoded again
	// (the pool's sweeps list the whole catalog every half second).
	listed struct {
		sync.Mutex
		m map[string]*Snapshot
	}
}

func (p *Plane) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

// Credentials authenticate this process to etcd: a TLS client
// configuration (trusted CA and, for mutual TLS, a client certificate) and
// optionally an etcd user. Endpoints must be https:// when TLS is set.
type Credentials struct {
	TLS                *tls.Config
	Username, Password string
}

// Connect connects to an etcd cluster with creds.
func Connect(ctx context.Context, endpoints []string, creds Credentials) (*Plane, error) {
	for _, e := range endpoints {
		if tlsURL := strings.HasPrefix(e, "https://"); tlsURL != (creds.TLS != nil) {
			if tlsURL {
				return nil, fmt.Errorf("%s is a TLS endpoint but no TLS client configuration was given", e)
			}
			return nil, fmt.Errorf("%s is not a TLS endpoint (https://) but TLS credentials were given", e)
		}
	}
	// The client's own logger would print every retry as JSON on stderr;
	// errors reach callers (and their logs) through return values instead.
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Context: ctx,
		Logger: zap.NewNop(), TLS: creds.TLS, Username: creds.Username, Password: creds.Password})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd %v: %w", endpoints, err)
	}
	return FromClient(ctx, cli, endpoints)
}

// FromClient is a Plane on a client made elsewhere (an in-process client of
// an etcd member this process runs, member.Member.Client), once etcd
// answers through it; endpoints are those other processes dial. The Plane
// owns the client: Close closes it, and so does a failed FromClient.
func FromClient(ctx context.Context, cli *clientv3.Client, endpoints []string) (*Plane, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Get(cctx, "/aquifer/ping"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd %v not reachable: %w", endpoints, err)
	}
	return &Plane{Client: cli, Endpoints: endpoints}, nil
}

// Close disconnects.
func (p *Plane) Close() error { return p.Client.Close() }
