package embed

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/pki"
	"github.com/prometheus/client_golang/prometheus"
)

// MemNodeConfig is what `aquifer memnode` runs: a memory node and, with
// a control plane, its registration, usage reports and authorization by
// the cluster catalog.
type MemNodeConfig struct {
	memnode.Config
	// TLSDir holds ca.crt and the node's certificate memnode.crt/.key:
	// hosts are then admitted by mutual TLS (their certificates of the
	// cluster CA) instead of the pod secret.
	TLSDir string
	// EtcdEndpoints (https://) make the node register itself
	// (/aquifer/memnode/NAME, under its own lease) with its address,
	// capacity and used bytes, report its usage every UsageInterval, and
	// authorize reads and deletes by the cluster catalog it watches.
	EtcdEndpoints []string
	// EtcdTLSDir holds ca.crt and the node's etcd client certificate:
	// memnode.crt/.key (a memory node's certificate has client usage), or
	// else client.crt/.key. Default TLSDir.
	EtcdTLSDir string
	// Advertise is the address hosts reach the node at (default the bound
	// listen address; required when listening on every address).
	Advertise string
	// LeaseTTL of the registration in seconds (default 10);
	// UsageInterval between usage reports (default 2s).
	LeaseTTL      int64
	UsageInterval time.Duration
}

func (c *MemNodeConfig) defaults() error {
	if c.LeaseTTL < 0 || c.UsageInterval < 0 {
		return fieldErr("lease-ttl", "--lease-ttl %d and --usage-interval %v must not be negative", c.LeaseTTL, c.UsageInterval)
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10
	}
	if c.UsageInterval == 0 {
		c.UsageInterval = 2 * time.Second
	}
	if c.TLSDir != "" {
		if len(c.Secret) > 0 {
			return fieldErr("secret-file", "a node admits hosts either by mutual TLS (--tls-dir) or by the pod secret: give one")
		}
		tc, id, err := memnode.ServerTLS(c.TLSDir)
		if err != nil {
			return fieldErr("tls-dir", "%w", err)
		}
		c.TLS = tc
		if c.Name == "" {
			c.Name = strings.TrimPrefix(id, "memnode ")
		}
	}
	if len(c.EtcdEndpoints) == 0 {
		if c.EtcdTLSDir != "" {
			return fieldErr("etcd-tls-dir", "applies with --etcd-endpoints only")
		}
		return nil
	}
	for _, e := range c.EtcdEndpoints {
		if !strings.HasPrefix(e, "https://") {
			return fieldErr("etcd-endpoints", "%q: the control plane must be authenticated: give https:// endpoints with --etcd-tls-dir", e)
		}
	}
	if c.EtcdTLSDir == "" {
		c.EtcdTLSDir = c.TLSDir
	}
	if c.EtcdTLSDir == "" {
		return fieldErr("etcd-tls-dir", "a control plane needs credentials: a directory with ca.crt and this node's certificate (memnode.crt and .key, or client.crt and .key)")
	}
	return nil
}

// etcdCredentials: the node's own certificate if the directory has one,
// else the shared client certificate.
func (c *MemNodeConfig) etcdCredentials() (control.Credentials, error) {
	p := pki.Files(c.EtcdTLSDir, memnode.NodeCertName)
	if _, err := os.Stat(p.CertFile); errors.Is(err, os.ErrNotExist) {
		p = pki.Files(c.EtcdTLSDir, ClientCert)
	}
	tc, err := pki.ClientTLS(filepath.Join(c.EtcdTLSDir, pki.CACert), p)
	if err != nil {
		return control.Credentials{}, fieldErr("etcd-tls-dir", "%w", err)
	}
	return control.Credentials{TLS: tc}, nil
}

// RunMemNode runs a memory node until ctx ends (what `aquifer memnode`
// runs). ready is called with the bound addresses once the node is
// registered (with a control plane) and about to serve.
func RunMemNode(ctx context.Context, c MemNodeConfig, ready func(addr, metricsAddr string)) error {
	if err := c.defaults(); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	log := c.Logger
	if len(c.EtcdEndpoints) == 0 {
		return memnode.Run(ctx, c.Config, ready)
	}
	cr, err := c.etcdCredentials()
	if err != nil {
		return err
	}
	plane, err := control.Connect(ctx, c.EtcdEndpoints, cr)
	if err != nil {
		return err
	}
	defer plane.Close()
	plane.Logger = log
	idx, err := plane.WatchSegmentIndex(ctx)
	if err != nil {
		return err
	}
	defer idx.Close()
	c.Catalog = idx
	var reg *control.Registration
	defer func() {
		if reg != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			reg.Close(cctx) // leave at once on a clean stop
			cancel()
		}
	}()
	return memnode.RunNode(ctx, c.Config, func(n *memnode.Node, addr, maddr string) error {
		adv := c.Advertise
		if adv == "" {
			adv = addr
		}
		host, _, err := net.SplitHostPort(adv)
		if err != nil {
			return fieldErr("advertise-addr", "%q: %w", adv, err)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return fieldErr("advertise-addr", "the node listens on every address (%s): give the address hosts reach it at", addr)
		}
		idx.SetSelf(adv, addr) // how catalog entries name this node
		m := control.Member{ID: sanitizeID(n.Name()), Addr: adv, Capacity: n.Store().Capacity(), Used: n.Store().Used(), Self: true}
		if reg, err = plane.RegisterMemNode(ctx, m, c.LeaseTTL); err != nil {
			return err
		}
		count := func(k int) func() float64 {
			return func() float64 {
				e, s, l := idx.Counts()
				return float64([3]int{e, s, l}[k])
			}
		}
		gauge := func(name, help string, k int) prometheus.Collector {
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "aquifer", Subsystem: "memnode", Name: name, Help: help}, count(k))
		}
		n.Registry().MustRegister(
			gauge("catalog_entries", "Published snapshots in this node's view of the cluster catalog.", 0),
			gauge("catalog_referenced_segments", "Distinct segments the catalog's entries list.", 1),
			gauge("catalog_entries_without_segments", "Entries that list no segments (published before entries listed them): while there are any, nothing unlisted is refused.", 2))
		if _, _, legacy := idx.Counts(); legacy > 0 {
			log.Warn("some catalog entries list no segments (published before entries did): reads of unlisted segments are not refused until they are republished", "entries", legacy)
		}
		go reportUsage(ctx, plane, reg, m, n, c.UsageInterval, log)
		log.Info("registered in the control plane", "id", m.ID, "addr", adv, "capacity", m.Capacity, "used", m.Used, "usage_interval", c.UsageInterval)
		if ready != nil {
			ready(addr, maddr)
		}
		return nil
	})
}

// reportUsage records the node's used bytes in its registration whenever
// they changed, every interval.
func reportUsage(ctx context.Context, plane *control.Plane, reg *control.Registration, m control.Member, n *memnode.Node, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		used := n.Store().Used()
		if used == m.Used && !failing {
			continue
		}
		m.Used = used
		err := plane.UpdateUsage(ctx, reg, m)
		if err != nil && !failing {
			log.Warn("reporting usage to the control plane", "err", err)
		}
		failing = err != nil
	}
}
