package cluster

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/aquifer-pool/aquifer/memnode"
)

// Memory-node security of a local cluster: every memory node and every
// host gets its own certificate of the cluster CA (the one the control
// plane's members made in DIR/etcd-tls; its key never leaves there), and
// the memory nodes register themselves in the control plane, so hosts
// take them from there (serve --memnodes-from-control-plane) and speak
// mutual TLS to them (--memnode-tls-dir).

// memnodeArgs issues memory node m's certificate (DIR/memnodes/m<k>.tls)
// and returns the flags it runs with beyond its own.
func (s *State) memnodeArgs(m *MemNode, leaseTTL int) ([]string, error) {
	dir := m.Dir + ".tls"
	host, _, err := net.SplitHostPort(m.Addr)
	if err != nil {
		return nil, err
	}
	if _, err := memnode.IssueNodeCert(s.etcdTLSDir(), dir, m.Name, []string{host}); err != nil {
		return nil, fmt.Errorf("certificate of %s: %w", m.Name, err)
	}
	return []string{"--tls-dir", dir, "--etcd-endpoints", strings.Join(s.Endpoints(), ","), "--lease-ttl", fmt.Sprint(leaseTTL)}, nil
}

// hostArgs issues host h of pod p's certificate (DIR/pod<i>/host<j>/memnode-tls)
// and returns the memory-node flags of its serve.
func (s *State) hostArgs(p *Pod, h *Host) ([]string, error) {
	dir := filepath.Join(h.Dir, "memnode-tls")
	if _, err := memnode.IssueHostCert(s.etcdTLSDir(), dir, p.Name, h.Name); err != nil {
		return nil, fmt.Errorf("certificate of %s/%s: %w", p.Name, h.Name, err)
	}
	return []string{"--memnodes-from-control-plane", "--memnode-tls-dir", dir}, nil
}

// waitRegistered waits until every memory node has registered itself in
// the control plane (hosts find them there).
func (s *State) waitRegistered(ctx context.Context) error {
	p, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer p.Close()
	var procs []*Proc
	for _, m := range s.MemNodes {
		procs = append(procs, &m.Proc)
	}
	for {
		ms, err := p.MemNodes(ctx)
		self := map[string]bool{}
		for _, m := range ms {
			if m.Self {
				self[m.Addr] = true
			}
		}
		missing := 0
		for _, m := range s.MemNodes {
			if !self[m.Addr] {
				missing++
			}
		}
		if err == nil && missing == 0 {
			return nil
		}
		if err := s.waitOrDie(ctx, procs); err != nil {
			return fmt.Errorf("%d of %d memory nodes not registered in the control plane: %w", missing, len(s.MemNodes), err)
		}
	}
}
