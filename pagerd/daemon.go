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
	"sync/atomic"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/pager"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/vmmproc"
	"github.com/aquifer-pool/aquifer/vmstate"
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
	// StateDir holds the durable record of every VM served (default:
	// SocketDir with ".state" appended, beside it). Locked like SocketDir.
	// A daemon started on it takes back every VM whose VMM still runs.
	StateDir string
	// VMMUID is the uid Firecracker runs as (under the jailer); -1 means
	// the daemon's own. A VM's socket admits only that uid (or the pid and
	// uid its PUT names).
	VMMUID int
	// AcceptTimeout bounds the wait for Firecracker after PUT (default 60s).
	AcceptTimeout time.Duration
	// OpenTimeout bounds opening a snapshot when a VM is prepared (catalog
	// and metadata reads; default 10s).
	OpenTimeout time.Duration
	// Started is when this daemon's process started (default: when New
	// was called): the stall of a VM re-adopted after a restart is
	// measured from it.
	Started time.Time
	// HandoffFrom, if set, is the handoff socket of a running daemon of
	// the same directories: New takes its VMs, locks and API socket over
	// (handoff.go) instead of taking the locks itself.
	HandoffFrom string
	// HandoffTimeout bounds a handoff (default 60s).
	HandoffTimeout time.Duration
	// APISocket is the control API socket Serve will be given (a handoff
	// checks both daemons name the same one).
	APISocket string
	// LearnedCold is how many bytes of cold pages the daemon learns per
	// snapshot (image) from its VMs' cold faults, and reads while later
	// VMs of it are pre-installed (pager.History); 0: no learning. It
	// keeps the histories of the 256 images restored most recently.
	LearnedCold uint64
	Pager       pager.Options
	Registry    *prometheus.Registry
	Logger      *slog.Logger
}

// Errors of the daemon itself (the opener's wrap restore's errors).
var (
	ErrNoVM     = errors.New("not found")
	ErrVMExists = errors.New("already exists")
	// ErrHandingOver: the daemon is handing its VMs to a successor.
	ErrHandingOver = fmt.Errorf("%w: this daemon is handing its VMs over to its successor; retry", restore.ErrUnavailable)
)

// vm is one served VM (internal state; the wire form is api.VM).
type vm struct {
	wire api.VM
	// history is what the daemon learned of the VM's image (nil: off).
	history *pager.History
	rec     *vmRecord
	ready   chan struct{}
	done    chan struct{}
	cancel  context.CancelFunc

	// Set once serving, for a handoff (under mu).
	mu       sync.Mutex
	sess     *pager.Session
	fds      servingFDs
	listener *handshake.Listener
	// acceptCancel interrupts the wait for the handshake; park, if set,
	// asks the waiting VM to hold still for a handoff (handoff.go).
	acceptCancel context.CancelFunc
	park         *park
	serving      chan struct{} // closed once the handshake is done
	// recorded, once serving, is closed when the VM's serving record is
	// written (it is written while the pre-install runs; nil: nothing
	// pending).
	recorded   chan struct{}
	handedOver atomic.Bool
	removes    atomic.Pointer[vmstate.RemoveLog]
	// servingHook, if set, is called once a taken-over VM's fault loop
	// runs (a handoff counts them).
	servingHook func()
	// stallFrom is where a taken-over VM's stall is measured from.
	stallFrom time.Time
	// pending is a taken-over VM's goroutine not started yet; discard
	// releases what it would have served with, if it never starts.
	pending, discard func()
}

// logRemove appends a REMOVE range the VM reported to its log.
func (v *vm) logRemove(log *slog.Logger) func(start, end uint64) {
	return func(start, end uint64) {
		if l := v.removes.Load(); l != nil {
			if err := l.Append(start, end); err != nil {
				log.Warn("logging a REMOVE range: it will not survive the daemon", "start", start, "end", end, "err", err)
			}
		}
	}
}

// errParked ends a wait for the handshake that a handoff holds still.
var errParked = errors.New("held still for a handoff")

// servingFDs are the descriptors a serving VM's successor needs.
type servingFDs struct{ uffd, pidfd, hup int }

// Daemon serves VMs.
type Daemon struct {
	cfg       Config
	log       *slog.Logger
	metrics   *Metrics
	dirLock   *os.File
	stateLock *os.File
	mu        sync.Mutex
	vms       map[string]*vm
	seq       uint64
	histories *pager.Histories
	wg        sync.WaitGroup

	// handoff: Prepare and Delete hold it shared; a handoff exclusively
	// while it freezes the VM set (handoff.go).
	handoffMu   sync.RWMutex
	frozen      bool
	handedOver  chan struct{}
	inherited   map[string]*handshake.Listener // listeners received in a handoff, by role
	apiL        *handshake.Listener            // the API listener (Serve)
	predecessor int
}

// New creates a daemon. It fails if another daemon uses the socket or
// state directory. Every VM recorded in the state directory whose VMM
// still runs is taken back and served again (adopt.go); with
// HandoffFrom, a running daemon's VMs are taken over (handoff.go).
func New(cfg Config) (*Daemon, error) {
	if cfg.Opener == nil {
		return nil, errors.New("a daemon needs a snapshot opener")
	}
	if cfg.SocketDir == "" {
		return nil, errors.New("a daemon needs a socket directory")
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Clean(cfg.SocketDir) + ".state"
	}
	if cfg.VMMUID < 0 {
		cfg.VMMUID = os.Getuid()
	}
	if cfg.AcceptTimeout == 0 {
		cfg.AcceptTimeout = 60 * time.Second
	}
	if cfg.OpenTimeout == 0 {
		cfg.OpenTimeout = 10 * time.Second
	}
	if cfg.HandoffTimeout == 0 {
		cfg.HandoffTimeout = 60 * time.Second
	}
	if cfg.Started.IsZero() {
		cfg.Started = time.Now()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, metrics: newMetrics(cfg.Registry), vms: map[string]*vm{},
		handedOver: make(chan struct{}), inherited: map[string]*handshake.Listener{},
		histories: pager.NewHistories(cfg.LearnedCold, 256)}
	if cfg.HandoffFrom != "" {
		if err := d.receiveHandoff(); err != nil {
			d.releaseLocks()
			for _, l := range d.inherited {
				l.Release() // the predecessor still serves on them
			}
			return nil, err
		}
		return d, nil
	}
	if err := d.lockDirs(); err != nil {
		return nil, err
	}
	d.adoptAll()
	return d, nil
}

// lockDirs takes the socket and state directories.
func (d *Daemon) lockDirs() error {
	lock, err := handshake.LockDir(d.cfg.SocketDir, "socket directory "+d.cfg.SocketDir+" is used by another daemon; give each daemon its own --socket-dir (or take a running daemon over with --handoff-from)")
	if err != nil {
		return err
	}
	if err := checkSocketDir(d.cfg.SocketDir, d.cfg.VMMUID, d.log); err != nil {
		lock.Close()
		return err
	}
	slock, err := handshake.LockDir(d.cfg.StateDir, "state directory "+d.cfg.StateDir+" is used by another daemon; give each daemon its own --state-dir")
	if err != nil {
		lock.Close()
		return err
	}
	d.dirLock, d.stateLock = lock, slock
	return nil
}

func (d *Daemon) releaseLocks() {
	for _, f := range []**os.File{&d.dirLock, &d.stateLock} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
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
	d.handoffMu.RLock()
	defer d.handoffMu.RUnlock()
	if d.frozen {
		return nil, ErrHandingOver
	}
	d.mu.Lock()
	if _, ok := d.vms[id]; ok {
		d.mu.Unlock()
		return nil, fmt.Errorf("VM %q: %w", id, ErrVMExists)
	}
	v := newVM(api.VM{ID: id, Snapshot: req.Snapshot, State: api.StateWaiting, VMMUID: peer.UID, VMMPID: peer.PID})
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
	sess, err := d.session(v, snap, req, nil)
	if err != nil {
		return fail(err)
	}
	// Unix socket paths are limited to 108 bytes: name sockets by a
	// sequence number, not by the (up to 128-byte) VM id.
	d.mu.Lock()
	d.seq++
	seq := d.seq
	d.mu.Unlock()
	v.wire.Socket = filepath.Join(d.cfg.SocketDir, fmt.Sprintf("vm%d.sock", seq))
	rec, err := vmstate.NewRecord()
	if err != nil {
		sess.Close()
		return fail(err)
	}
	now := time.Now()
	v.rec = &vmRecord{Record: rec, ID: id, Snapshot: req.Snapshot, Image: snap.Image.ID(), Version: snap.Version,
		Socket: v.wire.Socket, Seq: seq, Request: req, PeerUID: peer.UID, PeerPID: peer.PID,
		Prepared: now, AcceptBy: now.Add(d.cfg.AcceptTimeout)}
	// Recorded before the socket appears: a successor finds every VM a
	// VMM may have been told about.
	if err := d.save(v.rec); err != nil {
		sess.Close()
		return fail(err)
	}
	l, err := handshake.ListenWith(v.wire.Socket, handshake.ListenOptions{DirLocked: true, Owner: peer.UID})
	if err != nil {
		sess.Close()
		d.forget(id)
		return fail(err)
	}
	d.start(v, func(ctx context.Context) { d.runWaiting(ctx, v, snap, sess, l, peer) })
	return d.wireOf(v), nil
}

func newVM(w api.VM) *vm {
	return &vm{wire: w, ready: make(chan struct{}), done: make(chan struct{}), serving: make(chan struct{}),
		fds: servingFDs{-1, -1, -1}}
}

// session creates the pager session of a VM: the daemon's options, the
// PUT's, and a takeover's.
func (d *Daemon) session(v *vm, snap *restore.Snapshot, req api.PrepareRequest, adopt *pager.Adopt) (*pager.Session, error) {
	so := d.cfg.Pager
	so.Logger = d.log.With("vm", v.wire.ID, "snapshot", req.Snapshot)
	so.OnRemove = v.logRemove(so.Logger)
	so.EarlyResume = so.EarlyResume || req.EarlyResume
	so.NoPreinstall = so.NoPreinstall || req.NoPreinstall
	so.NoPrefetch = so.NoPrefetch || req.NoPrefetch
	so.Adopt = adopt
	so.History = d.historyOf(snap.Image)
	v.history = so.History
	return pager.New(snap, so)
}

// start runs fn as VM v's goroutine.
func (d *Daemon) start(v *vm, fn func(ctx context.Context)) {
	vctx, vcancel := context.WithCancel(context.Background())
	v.cancel = vcancel
	d.metrics.ActiveVMs.Inc()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(v.done)
		defer d.metrics.ActiveVMs.Dec()
		fn(vctx)
	}()
}

func (d *Daemon) wireOf(v *vm) *api.VM {
	v.mu.Lock()
	sess := v.sess
	v.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	c := v.wire
	if a := v.wire.Adopted; a != nil {
		cp := *a
		if cp.FirstFault == nil && sess != nil {
			// Served, not yet noticed by watchStall: the handler's
			// timestamp is exact either way.
			if first := sess.FirstServed(); !first.IsZero() {
				cp.FirstFault, cp.StallNS = &first, int64(first.Sub(v.stallFrom))
			}
		}
		c.Adopted = &cp
	}
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

// failVM marks v failed and forgets its durable state: a failed VM is
// never served again, by this daemon or a successor.
func (d *Daemon) failVM(v *vm, log *slog.Logger, err error) {
	log.Error("restore failed", "err", err)
	d.metrics.Restores.WithLabelValues("failed").Inc()
	d.setState(v, api.StateFailed, err)
	d.forget(v.wire.ID)
}

// runWaiting waits for VM v's Firecracker on l, records the handshake and
// serves the VM until it exits.
func (d *Daemon) runWaiting(ctx context.Context, v *vm, snap *restore.Snapshot, sess *pager.Session, l *handshake.Listener, peer handshake.AcceptOptions) {
	log := d.log.With("vm", v.wire.ID, "snapshot", v.wire.Snapshot)
	defer sess.Close()
	var readyOnce sync.Once
	markReady := func() { readyOnce.Do(func() { close(v.ready) }) }
	defer markReady()
	peer.MemSize, peer.Logger = int64(snap.Image.MemSize()), log
	v.mu.Lock()
	v.listener = l
	v.mu.Unlock()
	var conn *handshake.VM
	for {
		actx, cancel := context.WithDeadline(ctx, v.rec.AcceptBy)
		v.mu.Lock()
		v.acceptCancel = cancel
		parked := v.park != nil
		v.mu.Unlock()
		var c *handshake.VM
		err := errParked
		if !parked {
			c, err = handshake.Accept(actx, l, peer, func(handshake.Peer) { d.metrics.RefusedPeers.Inc() })
		}
		cancel()
		v.mu.Lock()
		v.acceptCancel = nil
		v.mu.Unlock()
		if err == nil {
			conn = c
			break
		}
		if p := v.takePark(); p != nil {
			// A handoff holds the VM still while it decides.
			close(p.parked)
			if <-p.outcome {
				l.Release() // the successor listens on it now
				return
			}
			continue
		}
		l.Close()
		if ctx.Err() != nil {
			return // stopping (the record stays) or deleted
		}
		d.failVM(v, log, err)
		return
	}
	l.Close()
	defer conn.Close()
	u := uffd.FromFd(conn.UFFD)
	conn.UFFD = -1
	defer u.Close()
	fds := servingFDs{uffd: u.Fd(), pidfd: conn.Watch.PidFD, hup: conn.Watch.HangupFD}
	d.recordServing(v, conn, fds, log)
	d.serve(ctx, v, log, sess, markReady, u, conn.Regions, fds, nil)
}

// waitRecorded waits until the VM's serving record is written (at once
// when none is being written); a file write, bounded by the disk.
func (v *vm) waitRecorded() {
	v.mu.Lock()
	recorded := v.recorded
	v.mu.Unlock()
	if recorded != nil {
		<-recorded
	}
}

// recordServing records a completed handshake and publishes the
// descriptors a handoff needs. The record is complete here; writing it
// (an atomic file write, vmstate.Save) runs beside the pre-install, and
// the VM is not reported ready before it is written: v.recorded is closed
// once it is, or once recording failed (the VM is then served, but a
// successor could not take it back).
func (d *Daemon) recordServing(v *vm, conn *handshake.VM, fds servingFDs, log *slog.Logger) {
	recorded := make(chan struct{})
	v.mu.Lock()
	v.recorded = recorded
	v.mu.Unlock()
	unrecorded := func(err error) {
		log.Warn("this VM cannot be re-adopted if the daemon stops", "err", err)
		d.forget(v.wire.ID)
	}
	complete := func() error {
		if fds.pidfd < 0 {
			return errors.New("no pidfd of the VMM")
		}
		id, err := vmmproc.Identify(conn.Peer.Pid, fds.pidfd)
		if err != nil {
			return err
		}
		fid, err := vmmproc.FileIDOf(fds.uffd)
		if err != nil {
			return err
		}
		v.rec.Serve(id, fid, conn.Dialect, conn.Regions) // not changed after this: safe to write from another goroutine
		return nil
	}
	if err := complete(); err != nil {
		unrecorded(err)
		close(recorded)
		return
	}
	go func() {
		defer close(recorded)
		if err := d.save(v.rec); err != nil {
			unrecorded(err)
		}
	}()
}

// serve runs a VM's session on its userfaultfd until the VM exits (or the
// daemon stops, or hands it over), and reports.
func (d *Daemon) serve(ctx context.Context, v *vm, log *slog.Logger, sess *pager.Session, markReady func(), u *uffd.FD,
	regions []handshake.Region, fds servingFDs, adopted *stallClock) {
	rl, err := vmstate.OpenRemoveLog(d.removesPath(v.wire.ID))
	if err != nil {
		log.Warn("REMOVE ranges of this VM will not survive the daemon", "err", err)
	} else {
		v.removes.Store(rl)
		defer func() { v.removes.Store(nil); rl.Close() }()
	}
	v.mu.Lock()
	v.sess, v.fds = sess, fds
	v.mu.Unlock()
	if adopted == nil {
		// Installing says the VM is recorded too: a daemon killed from
		// then on leaves it to its successor (the record is written beside
		// the pre-install).
		installing := func() {
			d.mu.Lock()
			if v.wire.State == api.StateWaiting {
				v.wire.State = api.StateInstalling
			}
			d.mu.Unlock()
		}
		go func() { v.waitRecorded(); installing() }()
	}
	close(v.serving)
	start := time.Now()
	go func() {
		select {
		case <-sess.Ready():
		case <-ctx.Done():
			return
		}
		v.waitRecorded()
		if err := sess.ReadyErr(); err != nil {
			// A VM that went away during its pre-install exited; that is
			// not a failure of the restore (serve records it).
			if !v.handedOver.Load() && ctx.Err() == nil && !uffd.IsGone(err) {
				d.failVM(v, log, err)
			}
			markReady()
			return
		}
		el := time.Since(start)
		d.metrics.RestoreSeconds.Observe(el.Seconds())
		d.mu.Lock()
		if v.wire.State != api.StateFailed {
			v.wire.State, v.wire.ReadyNS = api.StateReady, int64(el)
		}
		d.mu.Unlock()
		markReady()
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		d.cfg.Opener.Restored(rctx, v.wire.Snapshot)
		rcancel()
	}()
	if adopted != nil {
		go d.watchStall(ctx, v, log, sess, adopted)
	}
	rep, err := sess.Serve(ctx, u, regions, fds.pidfd, fds.hup)
	v.waitRecorded() // before it could be forgotten below
	if v.handedOver.Load() {
		if rep != nil {
			log.Info("handed over to the successor", "faults_served_here", rep.Handler.Faults)
		}
		return
	}
	if rep != nil && rep.LearnedNew > 0 && v.history != nil {
		d.saveHistory(v.rec.Image, v.history)
	}
	if rep != nil {
		d.metrics.observe(rep)
		w := wireReport(rep)
		d.mu.Lock()
		v.wire.Report = w
		d.mu.Unlock()
	}
	if ctx.Err() != nil && (rep == nil || rep.Handler.Exit == "stopped") {
		// The daemon is stopping (or the VM was deleted): a VM that still
		// runs keeps its record, so the next daemon takes it back.
		log.Info("stopped serving: the VM is left to a successor", "vmm_pid", v.rec.PeerPID)
		return
	}
	if err == nil {
		if err = sess.ReadyErr(); uffd.IsGone(err) {
			err = nil
		}
	}
	if err != nil {
		d.failVM(v, log, err)
		return
	}
	d.metrics.Restores.WithLabelValues("ok").Inc()
	d.forget(v.wire.ID) // before the state says so: an exited VM has no record
	d.setState(v, api.StateExited, nil)
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
	case <-d.handedOver:
		return d.wireOf(v), ErrHandingOver
	case <-ctx.Done():
		return d.wireOf(v), ctx.Err()
	}
	c := d.wireOf(v)
	if c.State == api.StateFailed {
		return c, fmt.Errorf("VM %q failed: %s", id, c.Error)
	}
	if v.handedOver.Load() {
		return c, ErrHandingOver
	}
	return c, nil
}

// Delete stops serving a VM and forgets it.
func (d *Daemon) Delete(id string) error {
	d.handoffMu.RLock()
	defer d.handoffMu.RUnlock()
	if d.frozen {
		return ErrHandingOver
	}
	d.mu.Lock()
	v, ok := d.vms[id]
	delete(d.vms, id)
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("VM %q: %w", id, ErrNoVM)
	}
	if v.cancel != nil {
		v.cancel()
		<-v.done
	}
	d.forget(id)
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

// Close stops serving every VM and releases the directories. The VMs'
// records stay: a daemon started on the same directories takes back every
// VM that still runs.
func (d *Daemon) Close() {
	d.mu.Lock()
	for _, v := range d.vms {
		if v.cancel != nil {
			v.cancel()
		}
	}
	d.mu.Unlock()
	d.wg.Wait()
	d.releaseLocks()
	for _, l := range d.inherited {
		l.Close()
	}
}

// HandedOver is closed once a successor took every VM over: the process
// should exit.
func (d *Daemon) HandedOver() <-chan struct{} { return d.handedOver }

// Predecessor is the pid of the daemon this one took over from (0: none).
func (d *Daemon) Predecessor() int { return d.predecessor }

// StateDir is the directory of the VMs' durable records.
func (d *Daemon) StateDir() string { return d.cfg.StateDir }

func wireReport(r *pager.Report) *api.Report {
	h := r.Handler
	return &api.Report{HotSource: r.HotSource, ColdSource: r.ColdSource, PreinstallNS: int64(r.Preinstall),
		PreinstallPages: r.PreinstallPages, PreinstallBytes: r.PreinstallBytes, ZeroPagesToKernel: r.ZeroPagesToKernel,
		ColdDemandExtents: r.ColdDemandExtents, ColdPrefetchExtent: r.ColdPrefetchExtent, ColdBytesRead: r.ColdBytesRead,
		ColdFaults: r.ColdFaults, HotFaults: r.HotFaults, ZeroFaults: r.ZeroFaults, ColdReadNS: int64(r.ColdReadTime),
		LearnedPages: r.LearnedPages, LearnedBeforeReady: r.LearnedBeforeReady, LearnedNew: r.LearnedNew,
		Handler: api.HandlerStats{Faults: h.Faults, WriteFaults: h.WriteFaults, ZeroFaults: h.ZeroFaults,
			BytesCopied: h.BytesCopied, Exists: h.Exists, Retries: h.Retries, Removes: h.Removes, Unexpected: h.Unexpected,
			Installed: h.Installed, Unregistered: h.Unregistered, WallNS: int64(h.Wall), Exit: h.Exit}}
}
