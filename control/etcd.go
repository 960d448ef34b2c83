package control

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// Plane is a connection to the control plane, and the embedded member if
// this process runs one.
type Plane struct {
	Client *clientv3.Client
	emb    *embed.Etcd
	// Endpoints clients use to reach etcd.
	Endpoints []string
	// Timeout bounds each call (default DefaultTimeout).
	Timeout time.Duration
}

// EmbeddedConfig configures an in-process etcd member.
type EmbeddedConfig struct {
	// Dir is the data directory (created if missing).
	Dir string
	// ClientAddr is host:port for clients (default 127.0.0.1 and a free
	// port); PeerAddr likewise for the (single-member) peer URL.
	ClientAddr, PeerAddr string
	// Name of the member (default "aquifer").
	Name string
}

// StartEmbedded starts a single-member etcd in this process and connects
// to it. Elections are tuned (10 ms ticks, 100 ms election timeout) so the
// member is ready in well under a second.
func StartEmbedded(ctx context.Context, c EmbeddedConfig) (*Plane, error) {
	if c.Dir == "" {
		return nil, fmt.Errorf("control: embedded etcd needs a data directory")
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, err
	}
	if c.Name == "" {
		c.Name = "aquifer"
	}
	var err error
	if c.ClientAddr == "" {
		if c.ClientAddr, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	if c.PeerAddr == "" {
		if c.PeerAddr, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = filepath.Join(c.Dir, "etcd")
	cfg.TickMs, cfg.ElectionMs = 10, 100
	cu := url.URL{Scheme: "http", Host: c.ClientAddr}
	pu := url.URL{Scheme: "http", Host: c.PeerAddr}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(c.Dir, "etcd.log")}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("control: starting embedded etcd in %s: %w", c.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, fmt.Errorf("control: embedded etcd not ready after 30s")
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	p, err := Connect(ctx, []string{cu.String()})
	if err != nil {
		e.Close()
		return nil, err
	}
	p.emb = e
	slog.Debug("embedded etcd ready", "client", cu.String(), "dir", cfg.Dir)
	return p, nil
}

// Connect connects to an external etcd cluster.
func Connect(ctx context.Context, endpoints []string) (*Plane, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Context: ctx,
		Logger: nil})
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

// Close disconnects and stops the embedded member, if any.
func (p *Plane) Close() error {
	err := p.Client.Close()
	if p.emb != nil {
		p.emb.Close()
		<-p.emb.Server.StopNotify()
	}
	return err
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
