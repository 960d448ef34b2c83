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
	"sync"
	"sync/atomic"
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
	"github.com/aquifer-pool/aquifer/rdma/verbs"
	"github.com/aquifer-pool/aquifer/restore"
	"golang.org/x/sys/unix"
)

// Server is a running host: its daemon and, in pod mode, the pod pieces.
type Server struct {
	cfg    Config
	log    *slog.Logger
	Daemon *pagerd.Daemon
	// Pod mode only:
	Pool                 *pool.Pool
	Plane                *control.Plane
	etcd                 *member.Member
	MemNodes             []string // memory node addresses
	nodes                []*memnode.Node
	region               cxl.Region
	closeReg             func() error
	cxlDown              string // why the CXL tier is out of service on this host
	podState             *control.PodState
	member               atomic.Pointer[control.PodMember]
	stopSuper, superDone chan struct{}
	rejoins              atomic.Uint64
	client               *rdma.Client
	tr                   rdma.Transport
	lis                  []net.Listener
	regs                 []*control.Registration
	nodeRegs             []*control.Registration
	members              []control.Member
	memsec               memsec
	done                 chan struct{}
	joinMu               sync.Mutex // a join after a handoff against Stop
}

// Start validates cfg and starts everything it names. On error nothing is
// left running.
func Start(ctx context.Context, cfg Config) (s *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := raiseNice(cfg.Nice); err != nil {
		return nil, err
	}
	s = &Server{cfg: cfg, log: cfg.Logger, done: make(chan struct{})}
	defer func() {
		if err != nil {
			s.Stop()
			s = nil
		}
	}()
	if err := s.hugePool(cfg.HugePages); err != nil {
		return nil, err
	}
	var opener restore.Opener
	if cfg.Images != "" {
		opener = &restore.Dir{Path: cfg.Images}
	} else {
		if err := s.startPod(ctx, cfg.Pod); err != nil {
			return nil, err
		}
		opener = s.Pool
	}
	dc := pagerd.Config{Opener: opener, SocketDir: cfg.SocketDir, StateDir: cfg.StateDir, VMMUID: cfg.VMMUID,
		AcceptTimeout: cfg.AcceptTimeout, Started: processStart, HandoffFrom: cfg.HandoffFrom, APISocket: cfg.API,
		Registry: cfg.Registry, Logger: cfg.Logger}
	dc.Pager.Workers = cfg.Workers
	dc.Pager.EarlyResume = cfg.EarlyResume
	dc.LearnedCold = uint64(max(cfg.LearnedCold, 0)) // negative: off
	if s.Daemon, err = pagerd.New(dc); err != nil {
		return nil, err
	}
	if cfg.HandoffFrom != "" && cfg.Pod != nil {
		// The predecessor left the pod as it exited: join it now.
		go s.joinAfterHandoff(cfg.Pod, s.Daemon.Predecessor())
	}
	return s, nil
}

// processStart is when this process started (near enough): the stall of
// a VM re-adopted after a restart is measured from it.
var processStart = time.Now()

// checkDescsPerSweep is how many descriptors of the CXL region's table the
// daemon checks on each sweep (4 MiB of the table, ~2 ms here).
const checkDescsPerSweep = 64 << 10

// Serve runs the control API on cfg.API, and waits for a successor on the
// handoff socket, until ctx ends or a successor took every VM over.
func (s *Server) Serve(ctx context.Context) error {
	if s.cfg.HandoffSocket == "none" {
		s.log.Warn("no handoff socket (--handoff-socket none, or --api too long to append .handoff): this daemon can be restarted, but not upgraded without a pause")
	} else {
		go func() {
			if err := s.Daemon.ServeHandoff(ctx, s.cfg.HandoffSocket); err != nil {
				s.log.Error("handoff socket: this daemon cannot be upgraded without a stall", "socket", s.cfg.HandoffSocket, "err", err)
			}
		}()
	}
	return s.Daemon.Serve(ctx, s.cfg.API)
}

// HandedOver is closed once a successor took this daemon's VMs over.
func (s *Server) HandedOver() <-chan struct{} { return s.Daemon.HandedOver() }

// startPod brings up the pod pieces in dependency order: control plane,
// this host's membership, memory nodes, the RDMA client, the CXL region
// and this host's identities on it, and the pool on top.
func (s *Server) startPod(ctx context.Context, c *PodConfig) error {
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return fieldErr("data-dir", "%w", err)
	}
	if err := s.mapRegion(c); err != nil {
		return err
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
	// The pool first (it receives the host's identities), then the claim
	// and the join.
	key, err := pool.CatalogKey(secret)
	if err != nil {
		return fieldErr("secret-file", "%w", err)
	}
	pc := pool.Config{Plane: s.Plane, RDMA: s.client, CatalogKey: key, Logger: s.log,
		MemTier: &pool.MemTierConfig{DeadAfter: c.MemNodeDeadAfter,
			GCInterval: c.MemNodeGCInterval, OrphanGrace: c.MemNodeOrphanGrace}}
	if s.region != nil && s.cxlDown == "" {
		if s.podState, err = s.Plane.NewPodState(c.Name, c.LeaseTTL); err != nil {
			return err
		}
		pc.PodState = s.podState
		region, next := s.region, 0
		pc.CheckRegion = func() error {
			// The superblock and identity on every sweep, and the next
			// slice of the descriptor table: the whole table in turn
			// (every 8 s for a 4 GiB region at the default sweep), at a
			// bounded cost per sweep whatever the device's size.
			var err error
			next, err = pod.CheckDescs(region, next, checkDescsPerSweep)
			return err
		}
	}
	if s.Pool, err = pool.New(pc); err != nil {
		return err
	}
	s.registerPodMetrics(s.cfg.Registry)
	if s.cxlDown != "" {
		s.Pool.ClearCXL(s.cxlDown)
	}
	if s.cfg.HandoffFrom != "" {
		// The predecessor is still this host's member of the pod (same host
		// name): restores read the RDMA copies until it left.
		s.Pool.ClearCXL("taking over from a running daemon: the CXL tier is joined once it has left the pod")
		return nil
	}
	return s.joinPod(ctx, c)
}

// joinPod joins the pod's CXL region and supervises the membership.
func (s *Server) joinPod(ctx context.Context, c *PodConfig) error {
	if err := s.joinRegion(ctx, c); err != nil {
		return err
	}
	if s.cxlDown != "" {
		s.Pool.ClearCXL(s.cxlDown)
	}
	if s.member.Load() != nil {
		s.stopSuper, s.superDone = make(chan struct{}), make(chan struct{})
		go s.supervise(c)
	}
	return nil
}

// joinAfterHandoff joins the pod once the predecessor (pid) has exited,
// having left it.
func (s *Server) joinAfterHandoff(c *PodConfig, pid int) {
	if pid > 0 {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			deadline := time.Now().Add(time.Minute)
			for time.Now().Before(deadline) {
				if n, err := unix.Poll(fds, 1000); err == nil && n > 0 {
					break
				}
				select {
				case <-s.done:
					unix.Close(fd)
					return
				default:
				}
			}
			unix.Close(fd)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s.joinMu.Lock()
	defer s.joinMu.Unlock()
	select {
	case <-s.done:
		return
	default:
	}
	if err := s.joinPod(ctx, c); err != nil {
		s.log.Error("joining the pod after the handoff: restores read the RDMA copies", "err", err)
		return
	}
	s.log.Info("joined the pod's CXL tier after the handoff")
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
	if !c.externalMemNodes() {
		return podSecret(c.SecretFile)
	}
	// The memory nodes already run with a secret: never invent one.
	b, err := memnode.ParseSecret(c.SecretFile)
	if err == nil && len(b) < 16 {
		err = fmt.Errorf("%s holds %d bytes, want at least 16", c.SecretFile, len(b))
	}
	if err != nil {
		return nil, fieldErr("secret-file", "%w (create one with `aquifer pool init` and give the memory nodes the same --secret-file)", err)
	}
	return b, nil
}

// startMemNodes registers external memory nodes, or starts in-process ones
// on loopback.
func (s *Server) startMemNodes(ctx context.Context, c *PodConfig, secret []byte) error {
	// External memory nodes: recorded in the catalog under this host's
	// lease (the entry means "served to this pod", not a liveness probe),
	// unless they registered themselves (then their registration, which
	// reports their usage, is theirs alone).
	self := map[string]bool{}
	if len(c.MemNodeAddrs) > 0 {
		self = s.selfRegistered(ctx)
	}
	for i, a := range c.MemNodeAddrs {
		s.MemNodes = append(s.MemNodes, a)
		if self[a] {
			s.log.Info("memory node registered itself; not recording it under this host's lease", "addr", a)
			continue
		}
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
		t, err := s.memNodeTransport(c, secret)
		if err != nil {
			return err
		}
		s.tr = t
	case "verbs":
		ctl, err := s.memNodeTransport(c, secret)
		if err != nil {
			return err
		}
		t, err := verbs.New(verbs.Config{Control: ctl})
		if err != nil {
			return fieldErr("rdma", "verbs: %w", err)
		}
		s.tr = t
	}
	var err error
	s.client, err = rdma.NewClient(rdma.Options{Transport: s.tr, Nodes: ids, Replicas: c.Replicas, Logger: s.log, Place: s.place,
		Membership: c.MemNodesFromControlPlane})
	if err == nil && c.MemNodesFromControlPlane {
		s.followMemNodes()
	}
	return err
}

// mapRegion maps the pod's CXL region (creating and formatting a new
// emulated one) and checks that it belongs to this pod, before anything
// else starts: a region of another pod is refused at once. A region that is
// there but unreadable (corrupt superblock or identity) is not fatal: the
// host runs with its CXL tier out of service and restores read the RDMA
// copies.
func (s *Server) mapRegion(c *PodConfig) error {
	b, _ := parseCXL(c.CXL, c.Name)
	switch b.kind {
	case "none":
		return nil
	case "shm":
		fresh := false
		if _, err := os.Stat(b.arg); errors.Is(err, os.ErrNotExist) {
			if err := shm.Create(b.arg, c.CXLSize); err != nil {
				return fieldErr("cxl", "creating the emulated region: %w", err)
			}
			fresh = true
		}
		st, err := os.Stat(b.arg)
		if err != nil {
			return fieldErr("cxl", "%w", err)
		}
		r, err := shm.Open(b.arg, shm.All(st.Size()), nil)
		if err != nil {
			return fieldErr("cxl", "%w", err)
		}
		s.region, s.closeReg = r, r.Close
		if fresh {
			if _, err := pod.Format(r, pod.FormatOptions{ChunkSize: c.CXLChunk, Pod: c.Name}); err != nil {
				return fieldErr("cxl-chunk", "formatting %s: %w", b.arg, err)
			}
		}
	case "devdax":
		size, _, err := devdax.Info(b.arg)
		if err != nil {
			return fieldErr("cxl", "%w", err)
		}
		m, err := devdax.Open(b.arg, []cxl.Window{{Off: 0, Len: size}})
		if err != nil {
			return fieldErr("cxl", "%w", err)
		}
		s.region, s.closeReg = m, m.Close
	}
	id, claimed, err := pod.ReadIdentity(s.region)
	switch {
	case err != nil:
		s.outOfService(fmt.Sprintf("CXL region %s:%s is unreadable: %v (restores read the RDMA copies; reformat it with aquifer pool init --force or aquifer cxl format)", b.kind, b.arg, err))
	case claimed && id.Pod != c.Name:
		return fieldErr("cxl", "%s:%s belongs to %s, not to pod %q: give this pod its own region", b.kind, b.arg, id, c.Name)
	}
	return nil
}

// outOfService runs this host without its CXL tier.
func (s *Server) outOfService(why string) {
	s.log.Error("CXL tier out of service", "why", why)
	s.cxlDown = why
}

// joinRegion claims the region for this pod's control plane (refusing a
// region claimed by another) and joins the pod as a member: a lease, and
// host slots from the pod's slot table for the owner identity and
// c.ReaderSlots readers.
func (s *Server) joinRegion(ctx context.Context, c *PodConfig) error {
	if s.region == nil || s.cxlDown != "" {
		return nil
	}
	b, _ := parseCXL(c.CXL, c.Name)
	cid, err := s.Plane.ClusterID(ctx)
	if err != nil {
		return err
	}
	if _, err := pod.Claim(s.region, c.Name, cid); err != nil {
		if errors.Is(err, pod.ErrOtherOwner) {
			return fieldErr("cxl", "%s:%s: %w", b.kind, b.arg, err)
		}
		s.outOfService(err.Error())
		return nil
	}
	return s.join(ctx, c)
}

// join takes this host's slots and opens its identities on the region.
func (s *Server) join(ctx context.Context, c *PodConfig) error {
	g, err := pod.ReadGeometry(s.region)
	if err != nil {
		s.outOfService(err.Error())
		return nil
	}
	m, err := s.podState.JoinMember(ctx, control.MemberSpec{Name: c.HostName, Addr: c.HostAddr, API: s.cfg.API,
		Slots: 1 + c.ReaderSlots, MinSlots: 1, HostSlots: g.HostSlots})
	if err != nil {
		return err
	}
	coord := pool.NewMemberCoordinator(s.podState, m)
	var pods []*pod.Pod
	for i, l := range m.Slots {
		p, err := pod.Open(ctx, s.region, l.Host, coord, pod.Options{Owner: i == 0, Valid: m.Valid})
		if err != nil {
			for _, q := range pods {
				q.Close(ctx)
			}
			m.Leave(ctx)
			return err
		}
		pods = append(pods, p)
	}
	s.member.Store(m)
	s.Pool.SetCXL(m, pods[0], pods[1:])
	slots := make([]int, len(m.Slots))
	for i, l := range m.Slots {
		slots[i] = l.Host
	}
	s.log.Info("joined the pod", "pod", c.Name, "host", c.HostName, "slots", slots, "readers", len(slots)-1)
	return nil
}

// supervise rejoins the pod whenever this host's lease is lost: its slots
// and chunks are gone (fenced; other hosts may already reuse them), so it
// drops its identities, serves from the RDMA copies meanwhile, and joins
// again as a new member.
func (s *Server) supervise(c *PodConfig) {
	defer close(s.superDone)
	for {
		m := s.member.Load()
		if m == nil {
			return
		}
		select {
		case <-s.stopSuper:
			return
		case <-m.Lost():
		}
		s.Pool.ClearCXL("this host's pod lease was lost (crash, partition or a stop longer than the TTL): fenced, rejoining")
		s.rejoins.Add(1)
		for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
			select {
			case <-s.stopSuper:
				return
			case <-time.After(backoff):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := s.join(ctx, c)
			cancel()
			if err == nil && s.cxlDown == "" {
				break
			}
			s.log.Warn("rejoining the pod", "err", err)
		}
	}
}

// Stop takes everything down (data stays on disk and in the region).
func (s *Server) Stop() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.joinMu.Lock()
	defer s.joinMu.Unlock()
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	if s.Daemon != nil {
		s.Daemon.Close()
	}
	if s.stopSuper != nil {
		close(s.stopSuper)
		<-s.superDone
	}
	if s.Pool != nil {
		s.Pool.Close() // leaves the region: chunks released, slots given up
	}
	if m := s.member.Load(); m != nil {
		m.Leave(ctx)
	}
	if s.closeReg != nil {
		s.closeReg()
	}
	s.stopMemsec()
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
	if s.etcd != nil {
		s.etcd.Stop()
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
	all, err := s.Plane.MemNodes(ctx)
	if err != nil {
		return nil
	}
	drains, _ := s.Plane.Drains(ctx)
	var nodes []control.Member
	for _, m := range all {
		if drains[m.Addr] == "" { // a draining node takes no new segment
			nodes = append(nodes, m)
		}
	}
	nodes = s.placementView(nodes)
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
	s.placedOn(out[:min(len(out), s.cfg.Pod.Replicas)], uint64(n))
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
