package pagerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/control"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/pager"
	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Snapshot is an opened snapshot: its image metadata and where its
// segments come from.
type Snapshot struct {
	Name        string
	Image       *snapimage.Image
	Hot         pager.HotSource
	HotFallback pager.HotSource
	Cold        pager.ColdSource
}

// Pool opens published snapshots for restores.
type Pool interface {
	Open(ctx context.Context, name string) (*Snapshot, error)
	// Restored records a restore (eviction order).
	Restored(ctx context.Context, name string)
}

// Publisher is implemented by pools that accept new snapshots; the daemon
// then serves /v1/snapshots.
type Publisher interface {
	Publish(ctx context.Context, image, name string) (*control.Snapshot, error)
	Remove(ctx context.Context, name string) error
	List(ctx context.Context) ([]*control.Snapshot, error)
}

// Config configures a Daemon.
type Config struct {
	Pool Pool
	// SocketDir holds the per-VM UFFD sockets.
	SocketDir string
	// AllowUID is the uid Firecracker runs as; -1 means the daemon's own.
	AllowUID int
	// AcceptTimeout bounds the wait for Firecracker after PUT (default 60s).
	AcceptTimeout time.Duration
	Pager         pager.Options
	Registry      *prometheus.Registry
	Logger        *slog.Logger
}

// VM states.
const (
	StateWaiting    = "waiting"    // socket listening, Firecracker not yet connected
	StateInstalling = "installing" // handshake done, hot set being installed
	StateReady      = "ready"      // hot set installed: resume the VM
	StateExited     = "exited"     // the VM went away
	StateFailed     = "failed"
)

// VM is one served VM.
type VM struct {
	ID       string        `json:"id"`
	Snapshot string        `json:"snapshot"`
	Socket   string        `json:"uffd_socket"`
	State    string        `json:"state"`
	Error    string        `json:"error,omitempty"`
	Report   *pager.Report `json:"report,omitempty"`
	ReadyNS  int64         `json:"ready_ns,omitempty"`

	ready  chan struct{}
	done   chan struct{}
	cancel context.CancelFunc
}

// Daemon serves VMs.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	mu      sync.Mutex
	vms     map[string]*VM
	seq     uint64
	wg      sync.WaitGroup
}

// New creates a daemon.
func New(cfg Config) (*Daemon, error) {
	if cfg.Pool == nil {
		return nil, errors.New("pagerd: no pool")
	}
	if cfg.SocketDir == "" {
		return nil, errors.New("pagerd: no socket directory")
	}
	if err := os.MkdirAll(cfg.SocketDir, 0o700); err != nil {
		return nil, err
	}
	if cfg.AllowUID < 0 {
		cfg.AllowUID = os.Getuid()
	}
	if cfg.AcceptTimeout == 0 {
		cfg.AcceptTimeout = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	return &Daemon{cfg: cfg, log: cfg.Logger, metrics: newMetrics(cfg.Registry), vms: map[string]*VM{}}, nil
}

// Prepare opens the snapshot and starts listening for the VM's
// Firecracker. It returns the socket path for mem_backend.backend_path.
func (d *Daemon) Prepare(ctx context.Context, id, snapshot string) (*VM, error) {
	return d.PrepareWith(ctx, id, snapshot, PrepareOptions{})
}

// PrepareOptions are per-VM choices of the orchestrator.
type PrepareOptions struct {
	// EarlyResume reports the VM ready before its whole hot set is
	// installed (see pager.Options.EarlyResume).
	EarlyResume bool `json:"early_resume,omitempty"`
}

// PrepareWith is Prepare with per-VM options.
func (d *Daemon) PrepareWith(ctx context.Context, id, snapshot string, po PrepareOptions) (*VM, error) {
	if err := control.ValidName(id); err != nil {
		return nil, err
	}
	d.mu.Lock()
	if _, ok := d.vms[id]; ok {
		d.mu.Unlock()
		return nil, fmt.Errorf("pagerd: VM %q already exists: %w", id, control.ErrExists)
	}
	vm := &VM{ID: id, Snapshot: snapshot, State: StateWaiting, ready: make(chan struct{}), done: make(chan struct{})}
	d.vms[id] = vm
	d.mu.Unlock()
	fail := func(err error) (*VM, error) {
		d.mu.Lock()
		delete(d.vms, id)
		d.mu.Unlock()
		return nil, err
	}
	snap, err := d.cfg.Pool.Open(ctx, snapshot)
	if err != nil {
		return fail(err)
	}
	so := d.sessionOptions(snap)
	so.EarlyResume = so.EarlyResume || po.EarlyResume
	sess, err := pager.New(snap.Image, snap.Hot, snap.Cold, so)
	if err != nil {
		return fail(err)
	}
	// Unix socket paths are limited to 108 bytes: name sockets by a
	// sequence number, not by the (up to 128-byte) VM id.
	d.mu.Lock()
	d.seq++
	vm.Socket = filepath.Join(d.cfg.SocketDir, fmt.Sprintf("vm%d.sock", d.seq))
	d.mu.Unlock()
	l, err := handshake.Listen(vm.Socket)
	if err != nil {
		sess.Close()
		return fail(err)
	}
	vctx, cancel := context.WithCancel(context.Background())
	vm.cancel = cancel
	d.metrics.ActiveVMs.Inc()
	d.wg.Add(1)
	go d.run(vctx, vm, snap, sess, l)
	return vm.snapshotCopy(d), nil
}

func (d *Daemon) sessionOptions(s *Snapshot) pager.Options {
	o := d.cfg.Pager
	o.HotFallback = s.HotFallback
	o.Logger = d.log.With("snapshot", s.Name)
	return o
}

func (d *Daemon) setState(vm *VM, state string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	vm.State = state
	if err != nil {
		vm.Error = err.Error()
	}
}

// run serves one VM from handshake to exit.
func (d *Daemon) run(ctx context.Context, vm *VM, snap *Snapshot, sess *pager.Session, l *handshake.Listener) {
	defer d.wg.Done()
	defer close(vm.done)
	defer d.metrics.ActiveVMs.Dec()
	defer sess.Close()
	log := d.log.With("vm", vm.ID, "snapshot", vm.Snapshot)
	finish := func(err error) {
		if err != nil {
			log.Error("restore failed", "err", err)
			d.metrics.Restores.WithLabelValues("failed").Inc()
			d.setState(vm, StateFailed, err)
		}
		select {
		case <-vm.ready:
		default:
			close(vm.ready)
		}
	}
	actx, cancel := context.WithTimeout(ctx, d.cfg.AcceptTimeout)
	conn, err := l.Accept(actx)
	cancel()
	l.Close()
	if err != nil {
		finish(err)
		return
	}
	defer conn.Close()
	res, err := handshake.Receive(conn, int64(snap.Image.MemSize()), 10*time.Second)
	if err != nil {
		finish(err)
		return
	}
	u := uffd.FromFd(res.UFFD)
	defer u.Close()
	if int(res.Peer.Uid) != d.cfg.AllowUID {
		finish(fmt.Errorf("pagerd: peer pid %d runs as uid %d, only uid %d may connect", res.Peer.Pid, res.Peer.Uid, d.cfg.AllowUID))
		return
	}
	w, err := handshake.WatchExit(conn, res)
	if err != nil {
		log.Warn("cannot watch the VM process; serving until ESRCH or the socket closes", "err", err)
	}
	defer w.Close()
	d.setState(vm, StateInstalling, nil)
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
		vm.State, vm.ReadyNS = StateReady, int64(el)
		d.mu.Unlock()
		close(vm.ready)
		d.cfg.Pool.Restored(context.Background(), vm.Snapshot)
	}()
	rep, err := sess.Serve(ctx, u, res.Regions, w.PidFD, w.HangupFD)
	if rep != nil {
		d.metrics.PreinstallSecs.Observe(rep.Preinstall.Seconds())
		d.metrics.PreinstallBytes.Add(float64(rep.PreinstallBytes))
		d.metrics.Faults.WithLabelValues("zero").Add(float64(rep.ZeroFaults))
		d.metrics.Faults.WithLabelValues("hot").Add(float64(rep.HotFaults))
		d.metrics.Faults.WithLabelValues("cold").Add(float64(rep.ColdFaults))
		d.metrics.ColdReadSeconds.Observe(rep.ColdReadTime.Seconds())
		d.metrics.ColdBytes.Add(float64(rep.ColdBytesRead))
		d.mu.Lock()
		vm.Report = rep
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
	d.setState(vm, StateExited, nil)
	log.Info("VM served", "preinstall", rep.Preinstall, "faults", rep.Handler.Faults, "exit", rep.Handler.Exit)
}

func (vm *VM) snapshotCopy(d *Daemon) *VM {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := *vm
	return &c
}

// Get returns a VM's state.
func (d *Daemon) Get(id string) (*VM, bool) {
	d.mu.Lock()
	vm, ok := d.vms[id]
	d.mu.Unlock()
	if !ok {
		return nil, false
	}
	return vm.snapshotCopy(d), true
}

// WaitReady waits until the VM's hot set is installed (or it failed).
func (d *Daemon) WaitReady(ctx context.Context, id string) (*VM, error) {
	d.mu.Lock()
	vm, ok := d.vms[id]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("pagerd: VM %q: %w", id, control.ErrNotFound)
	}
	select {
	case <-vm.ready:
	case <-ctx.Done():
		return vm.snapshotCopy(d), ctx.Err()
	}
	c := vm.snapshotCopy(d)
	if c.State == StateFailed {
		return c, fmt.Errorf("pagerd: VM %q failed: %s", id, c.Error)
	}
	return c, nil
}

// Delete stops serving a VM and forgets it.
func (d *Daemon) Delete(id string) error {
	d.mu.Lock()
	vm, ok := d.vms[id]
	delete(d.vms, id)
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("pagerd: VM %q: %w", id, control.ErrNotFound)
	}
	vm.cancel()
	<-vm.done
	return nil
}

// List returns all VMs sorted by ID.
func (d *Daemon) List() []*VM {
	d.mu.Lock()
	ids := make([]string, 0, len(d.vms))
	for id := range d.vms {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	sort.Strings(ids)
	out := make([]*VM, 0, len(ids))
	for _, id := range ids {
		if vm, ok := d.Get(id); ok {
			out = append(out, vm)
		}
	}
	return out
}

// Close stops every VM.
func (d *Daemon) Close() {
	d.mu.Lock()
	for _, vm := range d.vms {
		vm.cancel()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// Handler returns the control API.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, d.List()) })
	mux.HandleFunc("PUT /v1/vms/{id}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Snapshot string `json:"snapshot"`
			PrepareOptions
		}
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil || body.Snapshot == "" {
			writeErr(w, 400, fmt.Errorf("body must be {\"snapshot\": NAME[, \"early_resume\": BOOL]}: %v", err))
			return
		}
		vm, err := d.PrepareWith(r.Context(), r.PathValue("id"), body.Snapshot, body.PrepareOptions)
		if err != nil {
			writeErr(w, statusOf(err), err)
			return
		}
		writeJSON(w, 201, vm)
	})
	mux.HandleFunc("GET /v1/vms/{id}", func(w http.ResponseWriter, r *http.Request) {
		vm, ok := d.Get(r.PathValue("id"))
		if !ok {
			writeErr(w, 404, fmt.Errorf("no VM %q", r.PathValue("id")))
			return
		}
		writeJSON(w, 200, vm)
	})
	mux.HandleFunc("GET /v1/vms/{id}/ready", func(w http.ResponseWriter, r *http.Request) {
		timeout := 30 * time.Second
		if t := r.URL.Query().Get("timeout"); t != "" {
			if v, err := time.ParseDuration(t); err == nil {
				timeout = v
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		vm, err := d.WaitReady(ctx, r.PathValue("id"))
		switch {
		case err == nil:
			writeJSON(w, 200, vm)
		case errors.Is(err, context.DeadlineExceeded):
			writeErr(w, 504, fmt.Errorf("VM %q not ready after %v", r.PathValue("id"), timeout))
		default:
			writeErr(w, statusOf(err), err)
		}
	})
	if pub, ok := d.cfg.Pool.(Publisher); ok {
		mux.HandleFunc("POST /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
			var body struct {
				Image string `json:"image"`
				Name  string `json:"name"`
			}
			dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&body); err != nil || body.Image == "" || body.Name == "" {
				writeErr(w, 400, fmt.Errorf("body must be {\"image\": PATH, \"name\": NAME}: %v", err))
				return
			}
			s, err := pub.Publish(r.Context(), body.Image, body.Name)
			if err != nil {
				writeErr(w, statusOf(err), err)
				return
			}
			writeJSON(w, 201, s)
		})
		mux.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
			l, err := pub.List(r.Context())
			if err != nil {
				writeErr(w, 500, err)
				return
			}
			writeJSON(w, 200, l)
		})
		mux.HandleFunc("DELETE /v1/snapshots/{name}", func(w http.ResponseWriter, r *http.Request) {
			if err := pub.Remove(r.Context(), r.PathValue("name")); err != nil {
				writeErr(w, statusOf(err), err)
				return
			}
			w.WriteHeader(204)
		})
	}
	mux.HandleFunc("DELETE /v1/vms/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.Delete(r.PathValue("id")); err != nil {
			writeErr(w, statusOf(err), err)
			return
		}
		w.WriteHeader(204)
	})
	return mux
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, control.ErrNotFound):
		return 404
	case errors.Is(err, control.ErrExists):
		return 409
	case strings.Contains(err.Error(), "invalid name"), errors.Is(err, os.ErrNotExist):
		return 400
	}
	return 500
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

// Serve runs the control API on a Unix socket (mode 0600) until ctx ends.
// Only clients running as the daemon's uid (or root) are answered.
func (d *Daemon) Serve(ctx context.Context, apiSocket string) error {
	// The socket appears (mode 0600) only once it accepts connections.
	l, err := handshake.Listen(apiSocket)
	if err != nil {
		return fmt.Errorf("pagerd: control API: %w", err)
	}
	defer l.Close()
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context { return ctx }}
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		if s != http.StateNew {
			return
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			return
		}
		p, err := handshake.PeerOf(uc)
		if err != nil || (p.Uid != 0 && int(p.Uid) != os.Getuid()) {
			d.log.Warn("refusing control client", "pid", p.Pid, "uid", p.Uid, "err", err)
			c.Close()
		}
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err = srv.Serve(l.UnixListener)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
