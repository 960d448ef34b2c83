package member

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
)

// Config configures an in-process etcd member.
type Config struct {
	// Dir is the data directory (created if missing, mode 0700).
	Dir string
	// ClientAddr is host:port for clients (default 127.0.0.1 and a free
	// port); PeerAddr likewise for the peer URL.
	ClientAddr, PeerAddr string
	// Name of the member (default "aquifer").
	Name string
	// InitialCluster lists every member of a new multi-member cluster as
	// name=https://peer,... (default: this member alone).
	InitialCluster string
	// TLS makes the member serve clients and peers over mutual TLS: only
	// holders of a certificate its CA issued can read or write a key.
	// Without it the member speaks plain HTTP to anyone who can connect
	// (Insecure must then say so).
	TLS *TLSFiles
	// Insecure allows a member without TLS (package tests only).
	Insecure bool
}

// TLSFiles are the PEM files of a member's mutual TLS: the cluster CA
// that client and peer certificates must chain to, and the member's own
// certificate (server and client usage: etcd dials itself and its peers
// with it) and key.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
}

// Member is a running etcd member.
type Member struct {
	e *embed.Etcd
	// Endpoints clients use to reach it.
	Endpoints []string
}

// Start starts a single-member etcd cluster in this process (or restarts
// it on its data). Elections are tuned (10 ms ticks, 100 ms election
// timeout) so the member is ready in well under a second.
func Start(ctx context.Context, c Config) (*Member, error) {
	if c.Dir == "" {
		return nil, fmt.Errorf("etcd member: no data directory")
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
	scheme := "http"
	switch {
	case c.TLS != nil:
		scheme = "https"
		info := transport.TLSInfo{CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile, TrustedCAFile: c.TLS.CAFile,
			ClientCertAuth: true}
		cfg.ClientTLSInfo, cfg.PeerTLSInfo = info, info
		cfg.TlsMinVersion = "TLS1.2"
	case !c.Insecure:
		return nil, fmt.Errorf("etcd member in %s: no TLS files (a member without mutual TLS lets anyone who can connect read and write every key)", c.Dir)
	}
	cu := url.URL{Scheme: scheme, Host: c.ClientAddr}
	pu := url.URL{Scheme: scheme, Host: c.PeerAddr}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if c.InitialCluster != "" {
		cfg.InitialCluster = c.InitialCluster
		cfg.InitialClusterToken = "aquifer"
	}
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(c.Dir, "etcd.log")}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting etcd member in %s: %w", c.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd member in %s not ready after 60s (are the other members of %q running?)", c.Dir, cfg.InitialCluster)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	slog.Debug("etcd member ready", "client", cu.String(), "dir", cfg.Dir)
	return &Member{e: e, Endpoints: []string{cu.String()}}, nil
}

// Client returns a client of this member for the process that runs it: its
// calls are function calls into the member's server (etcd's v3client), with
// no socket, TLS or gRPC framing in between. Every other process dials
// Endpoints. Close the client before Stop.
func (m *Member) Client() *clientv3.Client { return v3client.New(m.e.Server) }

// Stop stops the member.
func (m *Member) Stop() {
	m.e.Close()
	<-m.e.Server.StopNotify()
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
