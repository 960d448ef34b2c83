package embed

import (
	"context"
	"net"
	"sync"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/tcp"
)

// MemNodeAccess is how a host reaches external memory nodes (embedded in
// PodConfig).
type MemNodeAccess struct {
	// MemNodeTLSDir holds ca.crt and this host's certificate host.crt and
	// .key (CN "host POD/HOST"): memory nodes are then spoken to over
	// mutual TLS instead of being admitted with the pod secret (which the
	// host still needs: it seals the catalog). External nodes only.
	MemNodeTLSDir string
	// MemNodesFromControlPlane takes the memory nodes from their own
	// registrations in the control plane (`aquifer memnode
	// --etcd-endpoints`) instead of MemNodeAddrs: new segments go to the
	// nodes registered now, by the usage they report, and the list follows
	// nodes that join and leave.
	MemNodesFromControlPlane bool
}

// memnodeAccessDefaults validates MemNodeAccess; it runs before the
// in-process defaults.
func (c *PodConfig) memnodeAccessDefaults() error {
	if c.MemNodesFromControlPlane {
		if len(c.MemNodeAddrs) > 0 {
			return fieldErr("memnodes-from-control-plane", "and --memnode-addrs both name the memory nodes: give one")
		}
		if c.MemNodes != 0 {
			return fieldErr("memnodes-from-control-plane", "and %d in-process memory nodes (--memnodes): give one", c.MemNodes)
		}
		if c.Replicas < 0 {
			return fieldErr("replicas", "%d: want at least 1", c.Replicas)
		}
		if c.Replicas == 0 {
			c.Replicas = 2
		}
		switch c.RDMA {
		case "":
			c.RDMA = "tcp"
		case "emu":
			return fieldErr("rdma", "emu models in-process memory nodes; registered ones are read with tcp or verbs")
		}
	}
	if c.MemNodeTLSDir != "" && len(c.MemNodeAddrs) == 0 && !c.MemNodesFromControlPlane {
		return fieldErr("memnode-tls-dir", "applies to external memory nodes (--memnode-addrs or --memnodes-from-control-plane); in-process ones are reached in-process or with the pod secret")
	}
	return nil
}

// externalMemNodes: the memory nodes are other processes.
func (c *PodConfig) externalMemNodes() bool {
	return len(c.MemNodeAddrs) > 0 || c.MemNodesFromControlPlane
}

// memsec is the host's side of memory-node membership and placement.
type memsec struct {
	cancel context.CancelFunc

	mu     sync.Mutex
	placed map[string]placedSince // by address
}

// placedSince counts what this host placed on a node since the usage the
// node last reported (reports come every few seconds; placement within
// that time must not pile everything onto one node).
type placedSince struct{ reported, bytes uint64 }

// memNodeTransport is the tcp transport for external memory nodes: mutual
// TLS with this host's certificate, or the pod secret.
func (s *Server) memNodeTransport(c *PodConfig, secret []byte) (*tcp.Transport, error) {
	var t *tcp.Transport
	if c.MemNodeTLSDir != "" {
		tc, id, err := memnode.ClientTLS(c.MemNodeTLSDir)
		if err != nil {
			return nil, fieldErr("memnode-tls-dir", "%w", err)
		}
		if want := memnode.HostIdentity(c.Name, c.HostName); id != want {
			s.log.Warn("this host's memory-node certificate names another host: memory nodes record it as the writer of what this host stores", "certificate", id, "host", want)
		}
		t = tcp.NewTLS(tc)
		s.log.Info("memory nodes over mutual TLS", "identity", id, "tls_dir", c.MemNodeTLSDir)
	} else {
		t = tcp.New(secret, c.Name)
	}
	t.LocalIP = net.ParseIP(c.HostAddr)
	return t, nil
}

// followMemNodes keeps the RDMA client's node list equal to the memory
// nodes registered in the control plane.
func (s *Server) followMemNodes() {
	ctx, cancel := context.WithCancel(context.Background())
	s.memsec.cancel = cancel
	set := func(ms []control.Member) []string {
		var ids []rdma.NodeID
		var addrs []string
		for _, m := range dedupeMemNodes(ms) {
			ids = append(ids, rdma.NodeID(m.Addr))
			addrs = append(addrs, m.Addr)
		}
		s.client.SetNodes(ids)
		return addrs
	}
	// The nodes registered now, before the daemon serves (a publish right
	// after start has them); then every change.
	if ms, err := s.Plane.MemNodes(ctx); err == nil {
		s.MemNodes = set(ms)
	}
	s.Plane.WatchMemNodes(ctx, func(ms []control.Member) { set(ms) })
}

// selfRegistered returns the addresses of memory nodes that registered
// themselves.
func (s *Server) selfRegistered(ctx context.Context) map[string]bool {
	ms, err := s.Plane.MemNodes(ctx)
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, m := range ms {
		if m.Self {
			out[m.Addr] = true
		}
	}
	return out
}

// dedupeMemNodes keeps one registration per address, the node's own over
// one a host made for it.
func dedupeMemNodes(ms []control.Member) []control.Member {
	out := make([]control.Member, 0, len(ms))
	at := map[string]int{}
	for _, m := range ms {
		if i, ok := at[m.Addr]; ok {
			if m.Self && !out[i].Self {
				out[i] = m
			}
			continue
		}
		at[m.Addr] = len(out)
		out = append(out, m)
	}
	return out
}

// placementView is the registered memory nodes as placement should see
// them: one per address, and a node's reported usage plus what this host
// placed on it since that report.
func (s *Server) placementView(ms []control.Member) []control.Member {
	ms = dedupeMemNodes(ms)
	s.memsec.mu.Lock()
	defer s.memsec.mu.Unlock()
	if s.memsec.placed == nil {
		s.memsec.placed = map[string]placedSince{}
	}
	for i, m := range ms {
		p := s.memsec.placed[m.Addr]
		if p.reported != m.Used {
			p = placedSince{reported: m.Used}
			s.memsec.placed[m.Addr] = p
		}
		ms[i].Used += p.bytes
	}
	return ms
}

// placedOn records that n bytes are about to be stored on nodes.
func (s *Server) placedOn(nodes []rdma.NodeID, n uint64) {
	s.memsec.mu.Lock()
	defer s.memsec.mu.Unlock()
	for _, a := range nodes {
		if p, ok := s.memsec.placed[string(a)]; ok {
			p.bytes += n
			s.memsec.placed[string(a)] = p
		}
	}
}

func (s *Server) stopMemsec() {
	if s.memsec.cancel != nil {
		s.memsec.cancel()
	}
}
