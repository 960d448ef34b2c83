package pool

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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
	// (real loopback network). Default "emu".
	Transport string
	Logger    *slog.Logger
}

// Embedded is a running in-process pod.
type Embedded struct {
	Pool   *Pool
	Plane  *control.Plane
	Nodes  []*memnode.Node
	Addrs  []string
	Region *shm.Region
	Pod    *pod.Pod
	client *rdma.Client
	tr     rdma.Transport
	lis    []net.Listener
	regs   []*control.Registration
}

// StartEmbedded starts (or restarts, keeping its data) an embedded pod.
func StartEmbedded(ctx context.Context, c EmbeddedConfig) (*Embedded, error) {
	if c.Dir == "" {
		return nil, errors.New("pool: embedded pod needs a data directory")
	}
	if c.Name == "" {
		c.Name = "pod0"
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
	if c.Transport == "" {
		c.Transport = "emu"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
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
	if e.Plane, err = control.StartEmbedded(ctx, control.EmbeddedConfig{Dir: c.Dir}); err != nil {
		return nil, err
	}
	secret, err := podSecret(filepath.Join(c.Dir, "pod.secret"))
	if err != nil {
		return nil, err
	}
	// Memory nodes on loopback.
	var ids []rdma.NodeID
	for i := 0; i < c.MemNodes; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
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
	if e.client, err = rdma.NewClient(rdma.Options{Transport: e.tr, Nodes: ids, Replicas: c.Replicas, Logger: c.Logger}); err != nil {
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
	if e.Pool, err = New(Config{Plane: e.Plane, RDMA: e.client, Pod: e.Pod, PodChunks: chunks, Logger: c.Logger}); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

// openPod joins the pod, waiting out the lease of a previous incarnation of
// this host (a restarted daemon) if it still holds slot 0.
func openPod(ctx context.Context, r *shm.Region, coord pod.Coordinator) (*pod.Pod, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := pod.Open(ctx, r, 0, coord, pod.Options{Owner: true})
		if err == nil {
			return p, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func podSecret(path string) ([]byte, error) {
	if b, err := os.ReadFile(path); err == nil && len(b) >= 16 {
		return b, nil
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, os.WriteFile(path, b, 0o600)
}

// Close stops the pod's pieces (data stays on disk and in the region file).
func (e *Embedded) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
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
