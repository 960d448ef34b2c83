package pagerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/pager"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Daemon.
type Config struct {
	// Opener opens snapshots; if it also implements restore.Catalog the
	// daemon serves /v1/snapshots.
	Opener restore.Opener
	// SocketDir holds the per-VM UFFD sockets. The daemon locks it: two
	// daemons never share one.
	SocketDir string
	// VMMUID is the uid Firecracker runs as (under the jailer); -1 means
	// the daemon's own. A VM's socket admits only that uid (or the pid and
	// uid its PUT names).
	VMMUID int
	// AcceptTimeout bounds the wait for Firecracker after PUT (default 60s).
	AcceptTimeout time.Duration
	// OpenTimeout bounds opening a snapshot when a VM is prepared (catalog
	// and metadata reads; default 10s).
	OpenTimeout time.Duration
	Pager       pager.Options
	Registry    *prometheus.Registry
	Logger      *slog.Logger
}

// Errors of the daemon itself (the opener's wrap restore's errors).
var (
	ErrNoVM     = errors.New("no such VM")
	ErrVMExists = errors.New("VM already exists")
)

// vm is one served VM (internal state; the wire form is api.VM).
type vm struct {
	wire   api.VM
	ready  chan struct{}
	done   chan struct{}
	cancel context.CancelFunc
}

// Daemon serves VMs.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	dirLock *os.File
	mu      sync.Mutex
	vms     map[string]*vm
	seq     uint64
	wg      sync.WaitGroup
}

// New creates a daemon. It fails if another daemon uses the socket
// directory.
func New(cfg Config) (*Daemon, error) {
	if cfg.Opener == nil {
		return nil, errors.New("pagerd: no snapshot opener")
	}
	if cfg.SocketDir == "" {
		return nil, errors.New("pagerd: no socket directory")
	}
	lock, err := handshake.LockDir(cfg.SocketDir, "socket directory "+cfg.SocketDir+" is used by another daemon; give each daemon its own --socket-dir")
	if err != nil {
		return nil, err
	}
	if cfg.VMMUID < 0 {
		cfg.VMMUID = os.Getuid()
	}
	if err := checkSocketDir(cfg.SocketDir, cfg.VMMUID, cfg.Logger); err != nil {
		lock.Close()
		return nil, err
	}
	if cfg.AcceptTimeout == 0 {
		cfg.AcceptTimeout = 60 * time.Second
	}
	if cfg.OpenTimeout == 0 {
		cfg.OpenTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	return &Daemon{cfg: cfg, log: cfg.Logger, metrics: newMetrics(cfg.Registry), dirLock: lock, vms: map[string]*vm{}}, nil
}

// Prepare opens the snapshot for VM id and starts listening for its
// Firecracker. The returned VM names the socket for
// mem_backend.backend_path.
func (d *Daemon) Prepare(ctx context.Context, id string, req api.PrepareRequest) (*api.VM, error) {
	if err := restore.ValidName(id); err != nil {
		return nil, fmt.Errorf("VM id: %w", err)
	}
	if req.Snapshot == "" {
		return nil, fmt.Errorf("%w request: no snapshot named", restore.ErrInvalid)
	}
	peer, err := d.vmmOf(req)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	if _, ok := d.vms[id]; ok {
		d.mu.Unlock()
		return nil, fmt.Errorf("VM %q: %w", id, ErrVMExists)
	}
	v := &vm{wire: api.VM{ID: id, Snapshot: req.Snapshot, State: api.StateWaiting, VMMUID: peer.UID, VMMPID: peer.PID},
		ready: make(chan struct{}), done: make(chan struct{})}
	d.vms[id] = v
	d.mu.Unlock()
	fail := func(err error) (*api.VM, error) {
		d.mu.Lock()
		delete(d.vms, id)
		d.mu.Unlock()
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, d.cfg.OpenTimeout)
	snap, err := d.cfg.Opener.Open(octx, req.Snapshot)
	cancel()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("opening snapshot %q took longer than %v: %w", req.Snapshot, d.cfg.OpenTimeout, restore.ErrUnavailable)
		}
		return fail(err)
	}
	so := d.cfg.Pager
	so.Logger = d.log.With("vm", id, "snapshot", req.Snapshot)
	so.EarlyResume = so.EarlyResume || req.EarlyResume
	so.NoPreinstall = so.NoPreinstall || req.NoPreinstall
	so.NoPrefetch = so.NoPrefetch || req.NoPrefetch
	sess, err := pager.New(snap, so)
	if err != nil {
		return fail(err)
	}
	// Unix socket paths are limited to 108 bytes: name sockets by a
	// sequence number, not by the (up to 128-byte) VM id.
	d.mu.Lock()
	d.seq++
	v.wire.Socket = filepath.Join(d.cfg.SocketDir, fmt.Sprintf("vm%d.sock", d.seq))
	d.mu.Unlock()
	l, err := handshake.ListenWith(v.wire.Socket, handshake.ListenOptions{DirLocked: true, Owner: peer.UID})
	if err != nil {
		sess.Close()
		return fail(err)
	}
	vctx, vcancel := context.WithCancel(context.Background())
	v.cancel = vcancel
	d.metrics.ActiveVMs.Inc()
	d.wg.Add(1)
	go d.run(vctx, v, snap, sess, l, peer)
	return d.wireOf(v), nil
}

func (d *Daemon) wireOf(v *vm) *api.VM {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := v.wire
	return &c
}

func (d *Daemon) setState(v *vm, state string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v.wire.State = state
	if err != nil {
		v.wire.Error = err.Error()
	}
}

// run serves one VM from handshake to exit.
func (d *Daemon) run(ctx context.Context, v *vm, snap *restore.Snapshot, sess *pager.Session, l *handshake.Listener, peer handshake.AcceptOptions) {
	defer d.wg.Done()
	defer close(v.done)
	defer d.metrics.ActiveVMs.Dec()
	defer sess.Close()
	log := d.log.With("vm", v.wire.ID, "snapshot", v.wire.Snapshot)
	var readyOnce sync.Once
	markReady := func() { readyOnce.Do(func() { close(v.ready) }) }
	finish := func(err error) {
		if err != nil {
			log.Error("restore failed", "err", err)
			d.metrics.Restores.WithLabelValues("failed").Inc()
			d.setState(v, api.StateFailed, err)
		}
		markReady()
	}
	actx, cancel := context.WithTimeout(ctx, d.cfg.AcceptTimeout)
	peer.MemSize, peer.Logger = int64(snap.Image.MemSize()), log
	conn, err := handshake.Accept(actx, l, peer, func(handshake.Peer) { d.metrics.RefusedPeers.Inc() })
	cancel()
	l.Close()
	if err != nil {
		finish(err)
		return
	}
	defer conn.Close()
	u := uffd.FromFd(conn.UFFD)
	conn.UFFD = -1
	defer u.Close()
	d.setState(v, api.StateInstalling, nil)
	start := time.Now()
	go func() {
		select {
		case <-sess.Ready():
		case <-ctx.Done():
			return
		}
		if err := sess.ReadyErr(); err != nil {
			finish(err)
			return
		}
		el := time.Since(start)
		d.metrics.RestoreSeconds.Observe(el.Seconds())
		d.mu.Lock()
		v.wire.State, v.wire.ReadyNS = api.StateReady, int64(el)
		d.mu.Unlock()
		markReady()
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		d.cfg.Opener.Restored(rctx, v.wire.Snapshot)
		rcancel()
	}()
	rep, err := sess.Serve(ctx, u, conn.Regions, conn.Watch.PidFD, conn.Watch.HangupFD)
	if rep != nil {
		d.metrics.observe(rep)
		w := wireReport(rep)
		d.mu.Lock()
		v.wire.Report = w
		d.mu.Unlock()
	}
	if err == nil {
		err = sess.ReadyErr()
	}
	if err != nil {
		finish(err)
		return
	}
	d.metrics.Restores.WithLabelValues("ok").Inc()
	d.setState(v, api.StateExited, nil)
	markReady()
	log.Info("VM served", "preinstall", rep.Preinstall, "faults", rep.Handler.Faults, "exit", rep.Handler.Exit)
}

// Get returns a VM's state.
func (d *Daemon) Get(id string) (*api.VM, error) {
	d.mu.Lock()
	v, ok := d.vms[id]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("VM %q: %w", id, ErrNoVM)
	}
	return d.wireOf(v), nil
}

// WaitReady waits until the VM's hot set is installed (or it failed).
func (d *Daemon) WaitReady(ctx context.Context, id string) (*api.VM, error) {
	d.mu.Lock()
	v, ok := d.vms[id]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("VM %q: %w", id, ErrNoVM)
	}
	select {
	case <-v.ready:
	case <-ctx.Done():
		return d.wireOf(v), ctx.Err()
	}
	c := d.wireOf(v)
	if c.State == api.StateFailed {
		return c, fmt.Errorf("VM %q failed: %s", id, c.Error)
	}
	return c, nil
}

// Delete stops serving a VM and forgets it.
func (d *Daemon) Delete(id string) error {
	d.mu.Lock()
	v, ok := d.vms[id]
	delete(d.vms, id)
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("VM %q: %w", id, ErrNoVM)
	}
	v.cancel()
	<-v.done
	return nil
}

// List returns all VMs sorted by ID.
func (d *Daemon) List() []api.VM {
	d.mu.Lock()
	out := make([]api.VM, 0, len(d.vms))
	for _, v := range d.vms {
		out = append(out, v.wire)
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Close stops every VM and releases the socket directory.
func (d *Daemon) Close() {
	d.mu.Lock()
	for _, v := range d.vms {
		v.cancel()
	}
	d.mu.Unlock()
	d.wg.Wait()
	if d.dirLock != nil {
		d.dirLock.Close()
		d.dirLock = nil
	}
}

func wireReport(r *pager.Report) *api.Report {
	h := r.Handler
	return &api.Report{HotSource: r.HotSource, ColdSource: r.ColdSource, PreinstallNS: int64(r.Preinstall),
		PreinstallPages: r.PreinstallPages, PreinstallBytes: r.PreinstallBytes, ZeroPagesToKernel: r.ZeroPagesToKernel,
		ColdDemandExtents: r.ColdDemandExtents, ColdPrefetchExtent: r.ColdPrefetchExtent, ColdBytesRead: r.ColdBytesRead,
		ColdFaults: r.ColdFaults, HotFaults: r.HotFaults, ZeroFaults: r.ZeroFaults, ColdReadNS: int64(r.ColdReadTime),
		Handler: api.HandlerStats{Faults: h.Faults, WriteFaults: h.WriteFaults, ZeroFaults: h.ZeroFaults,
			BytesCopied: h.BytesCopied, Exists: h.Exists, Retries: h.Retries, Removes: h.Removes, Unexpected: h.Unexpected,
			Installed: h.Installed, Unregistered: h.Unregistered, WallNS: int64(h.Wall), Exit: h.Exit}}
}
