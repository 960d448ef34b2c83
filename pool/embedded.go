package pool

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/cxl/shm"
	"github.com/aquifer-pool/aquifer/memnode"
	"github.com/aquifer-pool/aquifer/rdma"
	"github.com/aquifer-pool/aquifer/rdma/emu"
	"github.com/aquifer-pool/aquifer/rdma/tcp"
)

// EmbeddedConfig describes a whole pod in one process: an embedded etcd
// member, an emulated CXL region (a /dev/shm file) and N memory nodes on
// loopback. It is what `aquifer serve --embedded` runs so that a new user
// needs nothing else; at scale the same pieces run as separate processes.
type EmbeddedConfig struct {
	// Dir holds etcd's data, the memory nodes' data and the pod secret.
	Dir string
	// Name of the pod (default "pod0").
	Name string
	// MemNodes is the number of memory nodes (default 3); Replicas the
	// copies per cold segment (default 2).
	MemNodes, Replicas int
	// MemNodeCapacity in bytes per node (default 4 GiB, reserved lazily).
	MemNodeCapacity uint64
	// CXLPath is the emulated CXL region (default /dev/shm/aquifer-<name>-cxl)
	// and CXLSize its size (default 1 GiB); ChunkSize the pod's chunk size
	// (default 64 MiB: the largest hot segment one extent holds).
	CXLPath   string
	CXLSize   int64
	ChunkSize int64
	// Transport the pager reads the memory nodes with: "emu" (in-process,
	// the documented RDMA latency model; figures are emulated) or "tcp"
	// (real loopback network). Default "emu", and "tcp" (the only choice)
	// with ExternalMemNodes.
	Transport string
	// ExternalMemNodes are the addresses of `aquifer memnode` processes to
	// use instead of in-process memory nodes (then MemNodes is ignored and
	// MemNodeCapacity is the capacity recorded for each in the catalog).
	ExternalMemNodes []string
	// SecretFile holds the pod's shared admission secret (read with
	// memnode.ParseSecret). Default Dir/pod.secret, created if missing for
	// in-process nodes; external nodes need it to exist (aquifer pool init).
	SecretFile string
	// EtcdEndpoints, if set, is an external etcd cluster to use instead of
	// the embedded member (several pods may share one: keys are per pod).
	EtcdEndpoints []string
	// ReaderSlots is the number of extra CXL reader identities (host slots
	// after this host's own) that let restores read the hot tier
	// concurrently (default 3; -1 for none).
	ReaderSlots int
	Logger      *slog.Logger
}

// SecretFileName is the pod secret's name inside the data directory.
const SecretFileName = "pod.secret"

// defaults fills in every default; StartEmbedded and Init share them.
func (c *EmbeddedConfig) defaults() error {
	if c.ReaderSlots == 0 {
		c.ReaderSlots = 3
	}
	if c.Dir == "" {
		return errors.New("pool: embedded pod needs a data directory")
	}
	if c.Name == "" {
		c.Name = "pod0"
	}
	if len(c.ExternalMemNodes) > 0 {
		c.MemNodes = len(c.ExternalMemNodes)
		if c.Transport == "" {
			c.Transport = "tcp"
		}
		if c.Transport != "tcp" {
			return fmt.Errorf("pool: external memory nodes are read over tcp, not %q", c.Transport)
		}
	}
	if c.MemNodes <= 0 {
		c.MemNodes = 3
	}
	if c.Replicas <= 0 {
		c.Replicas = min(2, c.MemNodes)
	}
	if c.MemNodeCapacity == 0 {
		c.MemNodeCapacity = 4 << 30
	}
	if c.CXLSize == 0 {
		c.CXLSize = 1 << 30
	}
	if c.ChunkSize == 0 {
		c.ChunkSize = 64 << 20
	}
	if c.CXLPath == "" {
		c.CXLPath = fmt.Sprintf("/dev/shm/aquifer-%s-cxl", c.Name)
	}
	if c.SecretFile == "" {
		c.SecretFile = filepath.Join(c.Dir, SecretFileName)
	}
	if c.Transport == "" {
		c.Transport = "emu"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Embedded is a running in-process pod.
type Embedded struct {
	Pool   *Pool
	Plane  *control.Plane
	Nodes  []*memnode.Node
	Addrs  []string
	Region *shm.Region
	Pod    *pod.Pod

	readers []*pod.Pod
	client  *rdma.Client
	tr      rdma.Transport
	lis     []net.Listener
	regs    []*control.Registration

	nodeRegs []*control.Registration // in-process memory nodes, same order as Nodes
	members  []control.Member
}

// StartEmbedded starts (or restarts, keeping its data) an embedded pod.
func StartEmbedded(ctx context.Context, c EmbeddedConfig) (*Embedded, error) {
	if err := c.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, err
	}
	e := &Embedded{}
	ok := false
	defer func() {
		if !ok {
			e.Close()
		}
	}()
	var err error
	if len(c.EtcdEndpoints) > 0 {
		e.Plane, err = control.Connect(ctx, c.EtcdEndpoints)
	} else {
		e.Plane, err = control.StartEmbedded(ctx, control.EmbeddedConfig{Dir: c.Dir})
	}
	if err != nil {
		return nil, err
	}
	// This host is a member of the pod while its lease lives.
	host, _ := os.Hostname()
	hreg, err := e.Plane.RegisterHost(ctx, control.Member{ID: sanitizeID(fmt.Sprintf("%s-%s-%d", c.Name, host, os.Getpid()))}, 10)
	if err != nil {
		return nil, err
	}
	e.regs = append(e.regs, hreg)
	var secret []byte
	if len(c.ExternalMemNodes) > 0 {
		// The memory nodes already run with a secret: never invent one.
		secret, err = memnode.ParseSecret(c.SecretFile)
		if err == nil && len(secret) < 16 {
			err = fmt.Errorf("pool: pod secret %s holds %d bytes, want at least 16", c.SecretFile, len(secret))
		}
		if err != nil {
			return nil, fmt.Errorf("%w (create one with `aquifer pool init` and give the memory nodes the same --secret-file)", err)
		}
	} else if secret, err = podSecret(c.SecretFile); err != nil {
		return nil, err
	}
	// External memory nodes: recorded in the catalog under this host's
	// lease (the entry means "served to this pod", not a liveness probe).
	for i, a := range c.ExternalMemNodes {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("pool: memory node address %q: %w", a, err)
		}
		e.Addrs = append(e.Addrs, a)
		reg, err := e.Plane.RegisterMemNode(ctx, control.Member{ID: memberID(i, a), Addr: a, Capacity: c.MemNodeCapacity}, 10)
		if err != nil {
			return nil, err
		}
		e.regs = append(e.regs, reg)
	}
	// Memory nodes on loopback.
	var ids []rdma.NodeID
	for i := 0; len(c.ExternalMemNodes) == 0 && i < c.MemNodes; i++ {
		l, err := listenMemNode(filepath.Join(c.Dir, fmt.Sprintf("memnode-%d", i)))
		if err != nil {
			return nil, err
		}
		e.lis = append(e.lis, l)
		n, err := memnode.New(memnode.Config{Listen: l.Addr().String(), Capacity: c.MemNodeCapacity,
			DataDir: filepath.Join(c.Dir, fmt.Sprintf("memnode-%d", i)), Secret: secret,
			Name: fmt.Sprintf("memnode-%d", i), Logger: c.Logger.With("memnode", i)})
		if err != nil {
			return nil, err
		}
		e.Nodes = append(e.Nodes, n)
		e.Addrs = append(e.Addrs, l.Addr().String())
		go n.Serve(l)
		reg, err := e.Plane.RegisterMemNode(ctx, control.Member{ID: fmt.Sprintf("memnode-%d", i), Addr: l.Addr().String(),
			Capacity: c.MemNodeCapacity}, 10)
		if err != nil {
			return nil, err
		}
		e.regs = append(e.regs, reg)
		e.nodeRegs = append(e.nodeRegs, reg)
		e.members = append(e.members, control.Member{ID: fmt.Sprintf("memnode-%d", i), Addr: l.Addr().String(), Capacity: c.MemNodeCapacity})
	}
	switch c.Transport {
	case "emu":
		t := emu.New(emu.DefaultModel())
		for i, n := range e.Nodes {
			id := rdma.NodeID(e.Addrs[i])
			t.AddNode(id, n.Store())
			ids = append(ids, id)
		}
		e.tr = t
	case "tcp":
		e.tr = tcp.New(secret, c.Name)
		for _, a := range e.Addrs {
			ids = append(ids, rdma.NodeID(a))
		}
	default:
		return nil, fmt.Errorf("pool: unknown transport %q (emu or tcp)", c.Transport)
	}
	if e.client, err = rdma.NewClient(rdma.Options{Transport: e.tr, Nodes: ids, Replicas: c.Replicas, Logger: c.Logger,
		Place: e.place}); err != nil {
		return nil, err
	}
	// The emulated CXL region: formatted once, kept across restarts (its
	// catalog lives in etcd, its extents in the region).
	fresh := false
	if _, err := os.Stat(c.CXLPath); errors.Is(err, os.ErrNotExist) {
		if err := shm.Create(c.CXLPath, c.CXLSize); err != nil {
			return nil, err
		}
		fresh = true
	}
	st, err := os.Stat(c.CXLPath)
	if err != nil {
		return nil, err
	}
	if e.Region, err = shm.Open(c.CXLPath, shm.All(st.Size()), nil); err != nil {
		return nil, err
	}
	if fresh {
		if _, err := pod.Format(e.Region, pod.FormatOptions{ChunkSize: c.ChunkSize}); err != nil {
			return nil, err
		}
	}
	g, err := pod.ReadGeometry(e.Region)
	if err != nil {
		return nil, fmt.Errorf("pool: CXL region %s: %w (remove it to start a new pod)", c.CXLPath, err)
	}
	coord, err := e.Plane.NewPodCoordinator(c.Name, 10)
	if err != nil {
		return nil, err
	}
	if e.Pod, err = openPod(ctx, e.Region, coord); err != nil {
		return nil, err
	}
	chunks := make([]int, g.Chunks)
	for i := range chunks {
		chunks[i] = i
	}
	// Extra reader identities (host slots 1..n) let restores read the CXL
	// tier concurrently.
	var readers []*pod.Pod
	for slot := 1; slot <= min(c.ReaderSlots, g.HostSlots-1); slot++ {
		rp, err := openPodSlot(ctx, e.Region, coord, slot, false)
		if err != nil {
			return nil, err
		}
		readers = append(readers, rp)
		e.readers = append(e.readers, rp)
	}
	if e.Pool, err = New(Config{Plane: e.Plane, RDMA: e.client, Pod: e.Pod, PodChunks: chunks, Readers: readers, Logger: c.Logger}); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

// openPod joins the pod, waiting out the lease of a previous incarnation of
// this host (a restarted daemon) if it still holds slot 0.
func openPod(ctx context.Context, r *shm.Region, coord pod.Coordinator) (*pod.Pod, error) {
	return openPodSlot(ctx, r, coord, 0, true)
}

func openPodSlot(ctx context.Context, r *shm.Region, coord pod.Coordinator, slot int, owner bool) (*pod.Pod, error) {
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

// listenMemNode listens for in-process memory node dir. Published
// segments name their memory nodes by address, so a node keeps the address
// it was first given (recorded in dir/listen.addr) across restarts:
// otherwise a restarted pod could not find any snapshot published before.
func listenMemNode(dir string) (net.Listener, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "listen.addr")
	if b, err := os.ReadFile(file); err == nil {
		addr := strings.TrimSpace(string(b))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("pool: in-process memory node %s must listen on %s again (its published segments are recorded there): %w", dir, addr, err)
		}
		return l, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	tmp := file + ".tmp"
	if err := writeSync(tmp, []byte(l.Addr().String()+"\n")); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Rename(tmp, file); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func writeSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// memberID names an external memory node in the catalog.
func memberID(i int, addr string) string {
	id := []byte(fmt.Sprintf("memnode-%d-%s", i, addr))
	for j, b := range id {
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '.' || b == '-' || b == '_') {
			id[j] = '_'
		}
	}
	return string(id)
}

// podSecret reads the pod secret at path, creating it if it is missing.
// It is written as base64 text so that memnode.ParseSecret (which trims
// trailing whitespace) reads the same bytes as this process does.
func podSecret(path string) ([]byte, error) {
	if b, err := memnode.ParseSecret(path); err == nil && len(b) >= 16 {
		return b, nil
	}
	if _, err := writeSecret(path, false); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	return memnode.ParseSecret(path)
}

// writeSecret creates a fresh 256-bit secret at path (mode 0600), written
// atomically (temp file, fsync, rename). Unless replace, an existing file
// is kept and os.ErrExist returned.
func writeSecret(path string, replace bool) (bool, error) {
	if !replace {
		if _, err := os.Stat(path); err == nil {
			return false, fmt.Errorf("pool: pod secret %s: %w", path, os.ErrExist)
		}
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return false, err
	}
	txt := base64.StdEncoding.EncodeToString(raw) + "\n"
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pod.secret-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return false, err
	}
	if _, err := tmp.WriteString(txt); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if !replace {
		// Link fails if someone created the file meanwhile.
		if err := os.Link(tmp.Name(), path); err != nil {
			return false, err
		}
		return true, nil
	}
	return true, os.Rename(tmp.Name(), path)
}

// InitResult says what Init made.
type InitResult struct {
	Dir           string
	SecretFile    string
	SecretCreated bool // false: an existing secret was kept
	CXLPath       string
	Geometry      pod.Geometry
}

// Init prepares an embedded pod's persistent state, what `aquifer pool
// init` does: the data directory (0700), the pod secret (0600, kept if it
// exists) and the formatted emulated CXL region. An existing region is
// refused unless force, which recreates it empty: every hot placement in
// an existing catalog then fails its generation check and restores fall
// back to the RDMA copies, so nothing wrong is ever served.
func Init(c EmbeddedConfig, force bool) (*InitResult, error) {
	if err := c.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, err
	}
	res := &InitResult{Dir: c.Dir, SecretFile: c.SecretFile, CXLPath: c.CXLPath}
	created, err := writeSecret(c.SecretFile, false)
	if err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	res.SecretCreated = created
	if !created {
		if b, err := memnode.ParseSecret(c.SecretFile); err != nil || len(b) < 16 {
			return nil, fmt.Errorf("pool: existing pod secret %s is unreadable or shorter than 16 bytes (%v): remove it to make a new one", c.SecretFile, err)
		}
	}
	if _, err := os.Stat(c.CXLPath); err == nil {
		if !force {
			return nil, fmt.Errorf("pool: CXL region %s already exists; pass --force to format it again (its hot segments are lost; snapshots fall back to their RDMA copies)", c.CXLPath)
		}
		if err := os.Remove(c.CXLPath); err != nil {
			return nil, err
		}
	}
	if _, err := pod.Plan(c.CXLSize, pod.PageSize, pod.FormatOptions{ChunkSize: c.ChunkSize}); err != nil {
		return nil, fmt.Errorf("pool: CXL region of %d bytes with %d-byte chunks: %w", c.CXLSize, c.ChunkSize, err)
	}
	if err := shm.Create(c.CXLPath, c.CXLSize); err != nil {
		return nil, err
	}
	r, err := shm.Open(c.CXLPath, shm.All(c.CXLSize), nil)
	if err != nil {
		os.Remove(c.CXLPath)
		return nil, err
	}
	defer r.Close()
	if res.Geometry, err = pod.Format(r, pod.FormatOptions{ChunkSize: c.ChunkSize}); err != nil {
		os.Remove(c.CXLPath)
		return nil, err
	}
	return res, nil
}

// Close stops the pod's pieces (data stays on disk and in the region file).
func (e *Embedded) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, r := range e.readers {
		r.Close(ctx)
	}
	if e.Pod != nil {
		e.Pod.Close(ctx)
	}
	if e.client != nil {
		e.client.Close()
	}
	for _, l := range e.lis {
		l.Close()
	}
	for _, n := range e.Nodes {
		n.Close()
	}
	for _, r := range e.regs {
		r.Close(ctx)
	}
	if e.Plane != nil {
		e.Plane.Close()
	}
	return nil
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

// place is capacity-aware placement: it refreshes the in-process memory
// nodes' usage in the control plane, then orders the registered nodes that
// can hold n bytes by free capacity (control.PlaceSegment).
func (e *Embedded) place(id rdma.SegmentID, n int) []rdma.NodeID {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, node := range e.Nodes {
		if i < len(e.nodeRegs) {
			m := e.members[i]
			m.Used = node.Store().Used()
			e.Plane.UpdateUsage(ctx, e.nodeRegs[i], m)
		}
	}
	nodes, err := e.Plane.MemNodes(ctx)
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
