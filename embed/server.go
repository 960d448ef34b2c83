package embed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aquifer-pool/aquifer/control/member"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/cxl"
	"github.com/aquifer-pool/aquifer/cxl/devdax"
	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/cxl/shm"
	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/pagerd"
	"github.com/aquifer-pool/aquifer/pool"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/emu"
	"github.com/aquifer-pool/aquifer/rdma/tcp"
	"github.com/aquifer-pool/aquifer/rdma/verbs"
	"github.com/aquifer-pool/aquifer/restore"
)

// Server is a running host: its daemon and, in pod mode, the pod pieces.
type Server struct {
	cfg    Config
	log    *slog.Logger
	Daemon *pagerd.Daemon
	// Pod mode only:
	Pool     *pool.Pool
	Plane    *control.Plane
	member   *member.Member
	MemNodes []string // memory node addresses
	nodes    []*memnode.Node
	region   cxl.Region
	closeReg func() error
	pods     []*pod.Pod // this host's identities on the region: owner first, then readers
	client   *rdma.Client
	tr       rdma.Transport
	lis      []net.Listener
	regs     []*control.Registration
	nodeRegs []*control.Registration
	members  []control.Member
	done     chan struct{}
}

// Start validates cfg and starts everything it names. On error nothing is
// left running.
func Start(ctx context.Context, cfg Config) (s *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s = &Server{cfg: cfg, log: cfg.Logger, done: make(chan struct{})}
	defer func() {
		if err != nil {
			s.Stop()
			s = nil
		}
	}()
	var opener restore.Opener
	if cfg.Images != "" {
		opener = &restore.Dir{Path: cfg.Images}
	} else {
		if err := s.startPod(ctx, cfg.Pod); err != nil {
			return nil, err
		}
		opener = s.Pool
	}
	dc := pagerd.Config{Opener: opener, SocketDir: cfg.SocketDir, VMMUID: cfg.VMMUID, AcceptTimeout: cfg.AcceptTimeout,
		Registry: cfg.Registry, Logger: cfg.Logger}
	dc.Pager.Workers = cfg.Workers
	dc.Pager.EarlyResume = cfg.EarlyResume
	if s.Daemon, err = pagerd.New(dc); err != nil {
		return nil, err
	}
	return s, nil
}

// Serve runs the control API on cfg.API until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	return s.Daemon.Serve(ctx, s.cfg.API)
}

// startPod brings up the pod pieces in dependency order: control plane,
// this host's membership, memory nodes, the RDMA client, the CXL region
// and this host's identities on it, and the pool on top.
func (s *Server) startPod(ctx context.Context, c *PodConfig) error {
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return fieldErr("data-dir", "%v", err)
	}
	if err := s.startControlPlane(ctx, c); err != nil {
		return err
	}
	secret, err := s.secret(c)
	if err != nil {
		return err
	}
	if err := s.startMemNodes(ctx, c, secret); err != nil {
		return err
	}
	if err := s.startRDMA(c, secret); err != nil {
		return err
	}
	if err := s.openRegion(ctx, c); err != nil {
		return err
	}
	key, err := pool.CatalogKey(secret)
	if err != nil {
		return fieldErr("secret-file", "%v", err)
	}
	pc := pool.Config{Plane: s.Plane, RDMA: s.client, CatalogKey: key, Logger: s.log}
	if len(s.pods) > 0 {
		pc.Pod, pc.Readers = s.pods[0], s.pods[1:]
		g := s.pods[0].Geometry()
		for i := 0; i < g.Chunks; i++ {
			pc.PodChunks = append(pc.PodChunks, i)
		}
	}
	s.Pool, err = pool.New(pc)
	return err
}

func (s *Server) startControlPlane(ctx context.Context, c *PodConfig) error {
	if err := s.connectControlPlane(ctx, c); err != nil {
		return err
	}
	// This host is a member of the pod while its lease lives.
	host, _ := os.Hostname()
	reg, err := s.Plane.RegisterHost(ctx, control.Member{ID: sanitizeID(fmt.Sprintf("%s-%s-%d", c.Name, host, os.Getpid()))}, c.LeaseTTL)
	if err != nil {
		return err
	}
	s.regs = append(s.regs, reg)
	return nil
}

func (s *Server) secret(c *PodConfig) ([]byte, error) {
	if len(c.MemNodeAddrs) == 0 {
		return podSecret(c.SecretFile)
	}
	// The memory nodes already run with a secret: never invent one.
	b, err := memnode.ParseSecret(c.SecretFile)
	if err == nil && len(b) < 16 {
		err = fmt.Errorf("%s holds %d bytes, want at least 16", c.SecretFile, len(b))
	}
	if err != nil {
		return nil, fieldErr("secret-file", "%v (create one with `aquifer pool init` and give the memory nodes the same --secret-file)", err)
	}
	return b, nil
}

// startMemNodes registers external memory nodes, or starts in-process ones
// on loopback.
func (s *Server) startMemNodes(ctx context.Context, c *PodConfig, secret []byte) error {
	// External memory nodes: recorded in the catalog under this host's
	// lease (the entry means "served to this pod", not a liveness probe).
	for i, a := range c.MemNodeAddrs {
		s.MemNodes = append(s.MemNodes, a)
		reg, err := s.Plane.RegisterMemNode(ctx, control.Member{ID: memberID(i, a), Addr: a, Capacity: c.MemNodeCapacity}, c.LeaseTTL)
		if err != nil {
			return err
		}
		s.regs = append(s.regs, reg)
	}
	for i := 0; len(c.MemNodeAddrs) == 0 && i < c.MemNodes; i++ {
		dir := filepath.Join(c.DataDir, fmt.Sprintf("memnode-%d", i))
		l, err := listenMemNode(dir)
		if err != nil {
			return err
		}
		s.lis = append(s.lis, l)
		name := fmt.Sprintf("memnode-%d", i)
		n, err := memnode.New(memnode.Config{Listen: l.Addr().String(), Capacity: c.MemNodeCapacity,
			DataDir: dir, Secret: secret, Name: name, Logger: s.log.With("memnode", i)})
		if err != nil {
			return err
		}
		s.nodes = append(s.nodes, n)
		s.MemNodes = append(s.MemNodes, l.Addr().String())
		go n.Serve(l)
		m := control.Member{ID: name, Addr: l.Addr().String(), Capacity: c.MemNodeCapacity}
		reg, err := s.Plane.RegisterMemNode(ctx, m, c.LeaseTTL)
		if err != nil {
			return err
		}
		s.regs = append(s.regs, reg)
		s.nodeRegs = append(s.nodeRegs, reg)
		s.members = append(s.members, m)
	}
	return nil
}

func (s *Server) startRDMA(c *PodConfig, secret []byte) error {
	var ids []rdma.NodeID
	for _, a := range s.MemNodes {
		ids = append(ids, rdma.NodeID(a))
	}
	switch c.RDMA {
	case "emu":
		t := emu.New(emu.DefaultModel())
		for i, n := range s.nodes {
			t.AddNode(ids[i], n.Store())
		}
		s.tr = t
	case "tcp":
		s.tr = tcp.New(secret, c.Name)
	case "verbs":
		t, err := verbs.New(verbs.Config{Control: tcp.New(secret, c.Name)})
		if err != nil {
			return fieldErr("rdma", "verbs: %v", err)
		}
		s.tr = t
	}
	var err error
	s.client, err = rdma.NewClient(rdma.Options{Transport: s.tr, Nodes: ids, Replicas: c.Replicas, Logger: s.log, Place: s.place})
	return err
}

// openRegion maps the pod's CXL region and joins it: host slot 0 as the
// owner that publishes, then ReaderSlots reader identities.
func (s *Server) openRegion(ctx context.Context, c *PodConfig) error {
	b, _ := parseCXL(c.CXL, c.Name)
	switch b.kind {
	case "none":
		return nil
	case "shm":
		fresh := false
		if _, err := os.Stat(b.arg); errors.Is(err, os.ErrNotExist) {
			if err := shm.Create(b.arg, c.CXLSize); err != nil {
				return fieldErr("cxl", "creating the emulated region: %v", err)
			}
			fresh = true
		}
		st, err := os.Stat(b.arg)
		if err != nil {
			return fieldErr("cxl", "%v", err)
		}
		r, err := shm.Open(b.arg, shm.All(st.Size()), nil)
		if err != nil {
			return fieldErr("cxl", "%v", err)
		}
		s.region, s.closeReg = r, r.Close
		if fresh {
			if _, err := pod.Format(r, pod.FormatOptions{ChunkSize: c.CXLChunk}); err != nil {
				return fieldErr("cxl-chunk", "formatting %s: %v", b.arg, err)
			}
		}
	case "devdax":
		size, _, err := devdax.Info(b.arg)
		if err != nil {
			return fieldErr("cxl", "%v", err)
		}
		m, err := devdax.Open(b.arg, []cxl.Window{{Off: 0, Len: size}})
		if err != nil {
			return fieldErr("cxl", "%v", err)
		}
		s.region, s.closeReg = m, m.Close
	}
	g, err := pod.ReadGeometry(s.region)
	if err != nil {
		return fieldErr("cxl", "%s:%s: %v (format it: `aquifer cxl format`; an emulated region can be removed to start a new pod)", b.kind, b.arg, err)
	}
	coord, err := s.Plane.NewPodState(c.Name, 10)
	if err != nil {
		return err
	}
	slots := 1 + max(0, min(c.ReaderSlots, g.HostSlots-1))
	for slot := 0; slot < slots; slot++ {
		p, err := joinSlot(ctx, s.region, pool.NewCoordinator(coord), slot, slot == 0)
		if err != nil {
			return err
		}
		s.pods = append(s.pods, p)
	}
	return nil
}

// joinSlot joins the pod in host slot slot, waiting out the lease of a
// previous incarnation of this host (a restarted daemon) if it still holds
// the slot.
func joinSlot(ctx context.Context, r cxl.Region, coord pod.Coordinator, slot int, owner bool) (*pod.Pod, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := pod.Open(ctx, r, slot, coord, pod.Options{Owner: owner})
		if err == nil {
			return p, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Stop takes everything down (data stays on disk and in the region).
func (s *Server) Stop() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.Daemon != nil {
		s.Daemon.Close()
	}
	if s.Pool != nil {
		s.Pool.Close()
	}
	for i := len(s.pods) - 1; i >= 0; i-- {
		s.pods[i].Close(ctx)
	}
	if s.closeReg != nil {
		s.closeReg()
	}
	if s.client != nil {
		s.client.Close()
	}
	for _, l := range s.lis {
		l.Close()
	}
	for _, n := range s.nodes {
		n.Close()
	}
	for _, r := range s.regs {
		r.Close(ctx)
	}
	if s.Plane != nil {
		s.Plane.Close()
	}
	if s.member != nil {
		s.member.Stop()
	}
}

// place is capacity-aware placement: it refreshes the in-process memory
// nodes' usage in the control plane, then orders the registered nodes that
// can hold n bytes by free capacity (control.PlaceSegment).
func (s *Server) place(id rdma.SegmentID, n int) []rdma.NodeID {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, node := range s.nodes {
		m := s.members[i]
		m.Used = node.Store().Used()
		s.Plane.UpdateUsage(ctx, s.nodeRegs[i], m)
	}
	nodes, err := s.Plane.MemNodes(ctx)
	if err != nil {
		return nil
	}
	var room int
	for _, m := range nodes {
		if m.Free() >= uint64(n) {
			room++
		}
	}
	if room == 0 {
		return nil
	}
	pl, err := control.PlaceSegment(nodes, uint64(n), room)
	if err != nil {
		return nil
	}
	out := make([]rdma.NodeID, 0, len(pl))
	for _, m := range pl {
		out = append(out, rdma.NodeID(m.Addr))
	}
	return out
}

// sanitizeID maps s to a valid control-plane name.
func sanitizeID(s string) string {
	b := []byte(s)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			b[i] = '-'
		}
	}
	if len(b) > 128 {
		b = b[:128]
	}
	return string(b)
}

// memberID names an external memory node in the catalog.
func memberID(i int, addr string) string {
	return sanitizeID(fmt.Sprintf("memnode-%d-%s", i, strings.ReplaceAll(addr, ":", "_")))
}

func verbsAvailable() error {
	devs, err := verbs.Devices()
	if err != nil {
		return err
	}
	if len(devs) == 0 {
		return fmt.Errorf("%w: libibverbs sees no device (this machine has no RDMA NIC); use --rdma tcp or emu", rdma.ErrNoDevice)
	}
	return nil
}
