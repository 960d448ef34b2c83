package pagerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/pager"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/vmmproc"
	"github.com/aquifer-pool/aquifer/vmstate"
	"golang.org/x/sys/unix"
)

// Re-adoption: a daemon started on a state directory takes back every VM
// recorded there.
//
//   - A VM that completed its handshake (phase serving) whose VMM still
//     runs — same pid, same start time, same boot — is served again: its
//     userfaultfd is taken from the VMM itself (vmmproc: pidfd_open +
//     pidfd_getfd on the descriptor /proc/PID/fd shows as
//     anon_inode:[userfaultfd], checked by inode), its snapshot is opened
//     again and must be the same image (snapimage ID), the REMOVE ranges
//     logged so far are marked, and the session serves as before after
//     waking every registered range (pager.Adopt). The VMM's exit is
//     watched through the pidfd.
//   - A VM still waiting for its VMM gets its socket back (same path) until
//     its accept deadline.
//   - Records of VMMs that are gone (exited, pid reused, another boot), of
//     expired waits and unreadable ones are removed.

// adoptAll takes back every VM recorded in the state directory.
func (d *Daemon) adoptAll() {
	ids, err := d.records()
	if err != nil {
		d.log.Error("reading the VM state directory: no VM is re-adopted", "dir", d.cfg.StateDir, "err", err)
		return
	}
	for _, id := range ids {
		d.adoptRecorded(id)
	}
	if len(ids) > 0 {
		d.log.Info("VM records found at start", "records", len(ids), "serving", len(d.List()))
	}
}

// adoptRecorded takes back the VM recorded as id.
func (d *Daemon) adoptRecorded(id string) {
	log := d.log.With("vm", id)
	rec := &vmRecord{}
	if err := vmstate.Load(d.recordPath(id), rec); err != nil || rec.ID != id || restore.ValidName(id) != nil {
		log.Error("discarding an unreadable VM record", "file", d.recordPath(id), "err", err)
		d.outcome(api.AdoptedRestart, "unreadable")
		d.forget(id)
		return
	}
	d.mu.Lock()
	d.seq = max(d.seq, rec.Seq)
	d.mu.Unlock()
	if boot, err := vmmproc.BootID(); err != nil || boot != rec.BootID {
		log.Info("VM record from another boot: its VM is gone", "recorded_boot", rec.BootID)
		d.outcome(api.AdoptedRestart, "vmm_gone")
		d.forget(id)
		return
	}
	log = log.With("snapshot", rec.Snapshot)
	switch rec.Phase {
	case vmstate.PhaseWaiting:
		d.adoptWaiting(rec, nil, api.AdoptedRestart, log)
	case vmstate.PhaseServing:
		p, fd, err := rec.Take()
		d.adoptServing(rec, p, fd, -1, err, takeover{from: api.AdoptedRestart, stallFrom: d.cfg.Started}, log)
	}
}

// outcome counts one VM record found by a successor.
func (d *Daemon) outcome(from, what string) { d.metrics.Adoptions.WithLabelValues(from, what).Inc() }

// adoptWaiting listens for a VM that had no handshake yet, on its
// recorded socket (l: a listener handed over; nil: listen again).
func (d *Daemon) adoptWaiting(rec *vmRecord, l *handshake.Listener, from string, log *slog.Logger) {
	release := func() {
		if l != nil {
			l.Close()
		}
	}
	if time.Now().After(rec.AcceptBy) {
		log.Info("VM's VMM never connected before its deadline: forgotten", "accept_by", rec.AcceptBy)
		d.outcome(from, "expired")
		release()
		d.forget(rec.ID)
		return
	}
	if rec.PeerPID > 0 && unix.Kill(rec.PeerPID, 0) == unix.ESRCH {
		log.Info("VM's VMM exited before connecting: forgotten", "vmm_pid", rec.PeerPID)
		d.outcome(from, "vmm_gone")
		release()
		d.forget(rec.ID)
		return
	}
	peer := handshake.AcceptOptions{UID: rec.PeerUID, PID: rec.PeerPID}
	if l == nil {
		var err error
		if l, err = handshake.ListenWith(rec.Socket, handshake.ListenOptions{DirLocked: true, Owner: rec.PeerUID}); err != nil {
			log.Error("cannot listen for a prepared VM again: forgotten", "socket", rec.Socket, "err", err)
			d.outcome(from, "failed")
			d.forget(rec.ID)
			return
		}
	}
	v := newVM(api.VM{ID: rec.ID, Snapshot: rec.Snapshot, Socket: rec.Socket, State: api.StateWaiting, VMMUID: rec.PeerUID, VMMPID: rec.PeerPID})
	v.rec = rec
	d.register(v)
	d.outcome(from, "waiting")
	d.start(v, func(ctx context.Context) {
		snap, err := d.reopen(ctx, v, nil, log)
		if err != nil {
			l.Close()
			if ctx.Err() == nil {
				d.failVM(v, log, err)
			}
			close(v.ready)
			return
		}
		sess, err := d.session(v, snap, rec.Request, nil)
		if err != nil {
			l.Close()
			d.failVM(v, log, err)
			close(v.ready)
			return
		}
		d.runWaiting(ctx, v, snap, sess, l, peer)
	})
}

func (d *Daemon) register(v *vm) {
	d.mu.Lock()
	d.vms[v.wire.ID] = v
	d.mu.Unlock()
}

// takeover says how a VM is taken over.
type takeover struct {
	from string // api.AdoptedRestart or api.AdoptedHandoff
	// stallFrom is where the VM's stall is measured from.
	stallFrom time.Time
	// settle, for a handoff, waits until the predecessor stopped.
	settle func(context.Context) ([][2]uint64, error)
	// deferStart registers the VM without serving it yet (startAdopted).
	deferStart bool
}

// adoptServing serves again a VM that completed its handshake: p and ufd
// are its VMM and userfaultfd (taken back, or handed over with hup, the
// 1.12+ handshake connection, -1 for none), or takeErr says why they
// could not be had.
func (d *Daemon) adoptServing(rec *vmRecord, p *vmmproc.Process, ufd, hup int, takeErr error, t takeover, log *slog.Logger) *vm {
	from := t.from
	if errors.Is(takeErr, vmmproc.ErrGone) {
		log.Info("VM's VMM is gone: forgotten", "vmm", rec.VMM.String(), "why", takeErr)
		d.outcome(from, "vmm_gone")
		d.forget(rec.ID)
		return nil
	}
	at := time.Now()
	v := newVM(api.VM{ID: rec.ID, Snapshot: rec.Snapshot, Socket: rec.Socket, State: api.StateInstalling,
		VMMUID: rec.PeerUID, VMMPID: rec.VMM.PID, Adopted: &api.Adoption{From: from, At: at}})
	v.rec, v.stallFrom = rec, t.stallFrom
	if takeErr != nil {
		// The VMM runs but this daemon cannot take its userfaultfd (most
		// often a missing capability): the record stays for a daemon that
		// can; DELETE the VM to forget it.
		log.Error("cannot take a running VM back; its vCPUs wait until a daemon that can serves it, or its VMM is stopped", "vmm", rec.VMM.String(), "err", takeErr)
		v.wire.State, v.wire.Error = api.StateFailed, takeErr.Error()
		close(v.ready)
		close(v.done)
		d.register(v)
		d.outcome(from, "failed")
		return v
	}
	if unread, waiting, err := vmmproc.Pending(ufd); err == nil && from == api.AdoptedRestart {
		// (During a handoff the predecessor still serves: its faults in
		// flight are not left unanswered.)
		v.wire.Adopted.PendingFaults, v.wire.Adopted.QueuedFaults = waiting, unread
	}
	d.register(v)
	v.pending = func() { d.start(v, func(ctx context.Context) { d.runAdopted(ctx, v, p, ufd, hup, t, log) }) }
	v.discard = func() {
		p.Close()
		closeFDs([]int{ufd, hup})
		v.mu.Lock()
		if v.sess != nil {
			v.sess.Close()
		}
		v.mu.Unlock()
	}
	if !t.deferStart {
		d.startAdopted(v)
	}
	return v
}

// startAdopted starts serving a VM adoptServing registered.
func (d *Daemon) startAdopted(v *vm) {
	if run := v.pending; run != nil {
		v.pending, v.discard = nil, nil
		run()
	}
}

// discardAdopted forgets a VM adoptServing registered and never started
// (a handoff that failed), releasing its descriptors; its record stays.
func (d *Daemon) discardAdopted(v *vm) {
	d.mu.Lock()
	if d.vms[v.wire.ID] == v {
		delete(d.vms, v.wire.ID)
	}
	d.mu.Unlock()
	if f := v.discard; f != nil {
		v.pending, v.discard = nil, nil
		f()
	}
}

// runAdopted serves a taken-over VM until it exits.
func (d *Daemon) runAdopted(ctx context.Context, v *vm, p *vmmproc.Process, ufd, hup int, t takeover, log *slog.Logger) {
	defer p.Close()
	u := uffd.FromFd(ufd)
	defer u.Close()
	if hup >= 0 {
		defer unix.Close(hup)
	}
	var readyOnce sync.Once
	markReady := func() { readyOnce.Do(func() { close(v.ready) }) }
	defer markReady()
	var (
		sess *pager.Session
		err  error
	)
	v.mu.Lock()
	sess = v.sess // a handoff prepared it
	v.mu.Unlock()
	if sess == nil {
		sess, err = d.prepareAdopted(ctx, v, p, t.settle, log)
		if err != nil {
			if errors.Is(err, vmmproc.ErrGone) {
				log.Info("VM's VMM exited while its snapshot was being opened: forgotten")
				d.forget(v.wire.ID)
				d.setState(v, api.StateExited, nil)
				return
			}
			if ctx.Err() == nil {
				d.failVM(v, log, err)
			}
			return
		}
	}
	defer sess.Close()
	d.outcome(t.from, "served")
	log.Info("re-adopted VM", "from", t.from, "vmm", v.rec.VMM.String(), "pending_faults", v.wire.Adopted.PendingFaults, "queued_faults", v.wire.Adopted.QueuedFaults,
		"removed_ranges", len(d.removedRanges(v)))
	d.serve(ctx, v, log, sess, markReady, u, v.rec.HandshakeRegions(), servingFDs{uffd: ufd, pidfd: p.PidFD, hup: hup},
		&stallClock{from: t.stallFrom, kind: t.from})
}

// stallClock says where a taken-over VM's stall is measured from.
type stallClock struct {
	from time.Time
	kind string
}

// prepareAdopted opens the snapshot of a taken-over VM again, checks it is
// the image the VM was served, and creates its session.
func (d *Daemon) prepareAdopted(ctx context.Context, v *vm, p *vmmproc.Process, settle func(context.Context) ([][2]uint64, error), log *slog.Logger) (*pager.Session, error) {
	snap, err := d.reopen(ctx, v, p, log)
	if err != nil {
		return nil, err
	}
	removed, err := vmstate.ReadRemoves(d.removesPath(v.wire.ID))
	if err != nil {
		return nil, fmt.Errorf("VM %q: its balloon (REMOVE) log cannot be read, so removed pages could be served snapshot content: %w", v.wire.ID, err)
	}
	adopt := &pager.Adopt{Removed: removed, Settle: settle}
	adopt.Serving = func() {
		v.mu.Lock()
		ch := v.servingHook
		v.mu.Unlock()
		if ch != nil {
			ch()
		}
	}
	sess, err := d.session(v, snap, v.rec.Request, adopt)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	v.sess = sess
	v.mu.Unlock()
	return sess, nil
}

func (d *Daemon) removedRanges(v *vm) [][2]uint64 {
	r, _ := vmstate.ReadRemoves(d.removesPath(v.wire.ID))
	return r
}

// reopen opens the snapshot of a recorded VM again and checks it is the
// image the VM was served. While the tiers or the control plane are
// unavailable it retries (until the VMM exits: p, if known).
func (d *Daemon) reopen(ctx context.Context, v *vm, p *vmmproc.Process, log *slog.Logger) (*restore.Snapshot, error) {
	rec := v.rec
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		octx, cancel := context.WithTimeout(ctx, d.cfg.OpenTimeout)
		snap, err := d.cfg.Opener.Open(octx, rec.Snapshot)
		cancel()
		if err == nil {
			if id := snap.Image.ID(); id != rec.Image {
				return nil, fmt.Errorf("%w: snapshot %q now holds another image (ID %s; the VM was served %s, published %s): it was republished while the VM ran, so this daemon cannot serve it the same pages; stop its VMM",
					restore.ErrInvalid, rec.Snapshot, id, rec.Image, rec.Version)
			}
			if snap.Version != rec.Version {
				log.Info("snapshot republished with the same image since the VM was prepared", "was", rec.Version, "now", snap.Version)
			}
			return snap, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !errors.Is(err, restore.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("snapshot %q of a re-adopted VM: %w", rec.Snapshot, err)
		}
		if p != nil && p.Exited() {
			return nil, vmmproc.ErrGone
		}
		log.Warn("the snapshot of a re-adopted VM cannot be opened yet; retrying", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// watchStall records when a taken-over VM's first fault was served here
// (the handler timestamps it; looking less often as time passes only
// delays the log line).
func (d *Daemon) watchStall(ctx context.Context, v *vm, log *slog.Logger, sess *pager.Session, c *stallClock) {
	for wait := time.Millisecond; ; wait = min(wait*5/4+time.Microsecond, 100*time.Millisecond) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		first := sess.FirstServed()
		if first.IsZero() {
			continue
		}
		stall := first.Sub(c.from)
		d.mu.Lock()
		v.wire.Adopted.FirstFault, v.wire.Adopted.StallNS = &first, int64(stall)
		d.mu.Unlock()
		d.metrics.AdoptStall.WithLabelValues(c.kind).Observe(stall.Seconds())
		log.Info("first fault served after the takeover", "from", c.kind, "stall", stall, "since", c.from.Format(time.RFC3339Nano))
		return
	}
}
