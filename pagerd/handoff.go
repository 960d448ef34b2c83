package pagerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/vmmproc"
	"github.com/aquifer-pool/aquifer/vmstate"
	"golang.org/x/sys/unix"
)

// A planned upgrade without a stall: the running daemon listens on a
// handoff socket (SOCK_SEQPACKET, mode 0600, beside its API socket); its
// successor, started with HandoffFrom, connects and takes everything over
// in one conversation:
//
//	successor                          predecessor
//	hello (directories)        ──►     freezes: PUT and DELETE answer 503 "retry";
//	                                   waiting VMs stop accepting (their listeners idle)
//	                           ◄──     begin: the API and handoff listeners, the socket
//	                                   and state directory locks (SCM_RIGHTS)
//	                           ◄──     one vm per VM: its record, and its userfaultfd,
//	                                   pidfd and 1.12+ handshake connection, or its
//	                                   listening socket; sent
//	opens every snapshot again,
//	checks each is the same image
//	ready                      ──►     stops installing ahead of faults (pre-install,
//	                                   zero runs, prefetch: pager.Session.Quiesce);
//	                           ◄──     quiesced   (demand faults still served)
//	starts every fault loop,
//	wakes every registered range
//	serving                    ──►     stops its fault loops (their queued faults done)
//	                           ◄──     stopped
//	marks the REMOVE ranges the predecessor logged meanwhile, resumes the
//	pre-installs, starts the waiting VMs' accepts
//	done                       ──►     releases its copies (no socket is unlinked), exits
//
// Both fault loops read the same userfaultfds between serving and stopped:
// each fault is read by one of them and served by it; a page served twice
// is EEXIST, which is harmless. Nothing is installed ahead of faults by
// either while both run, so no install races a REMOVE the other read.
//
// Until "done" the predecessor keeps duplicates of every descriptor it
// sent; if the successor goes away before it (refuses, crashes), the
// predecessor takes its VMs back itself, exactly as a restart would, and
// serves on. A VM never waits longer than the handoff.

const handoffVersion = 1

// hoMsg is one handoff message.
type hoMsg struct {
	Op      string `json:"op"`
	Version int    `json:"version,omitempty"`
	PID     int    `json:"pid,omitempty"`
	// SocketDir and StateDir (hello) must be the predecessor's.
	SocketDir string `json:"socket_dir,omitempty"`
	StateDir  string `json:"state_dir,omitempty"`
	// API and Handoff are the predecessor's socket paths (begin).
	API     string `json:"api,omitempty"`
	Handoff string `json:"handoff,omitempty"`
	Seq     uint64 `json:"seq,omitempty"`
	// FDs names the descriptors sent with the message, in order.
	FDs    []string  `json:"fds,omitempty"`
	Wire   *api.VM   `json:"wire,omitempty"`
	Record *vmRecord `json:"record,omitempty"`
	Error  string    `json:"error,omitempty"`
}

// hoConn is one end of a handoff conversation.
type hoConn struct {
	c        *net.UnixConn
	deadline time.Time
}

func (h *hoConn) send(m hoMsg, fds ...int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	h.c.SetWriteDeadline(h.deadline)
	if _, _, err := h.c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("handoff: sending %s: %w", m.Op, err)
	}
	return nil
}

// recv reads one message and the descriptors it names.
func (h *hoConn) recv(want ...string) (hoMsg, []int, error) {
	var m hoMsg
	buf := make([]byte, 1<<20)
	oob := make([]byte, unix.CmsgSpace(16*4))
	h.c.SetReadDeadline(h.deadline)
	n, oobn, flags, _, err := h.c.ReadMsgUnix(buf, oob)
	var fds []int
	if oobn > 0 {
		if cm, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
			for _, c := range cm {
				if got, err := unix.ParseUnixRights(&c); err == nil {
					for _, fd := range got {
						unix.CloseOnExec(fd)
					}
					fds = append(fds, got...)
				}
			}
		}
	}
	fail := func(err error) (hoMsg, []int, error) {
		closeFDs(fds)
		return m, nil, err
	}
	switch {
	case err != nil:
		return fail(fmt.Errorf("handoff: waiting for %v: %w", want, err))
	case n == 0:
		return fail(fmt.Errorf("handoff: the other daemon closed the connection (waiting for %v): %w", want, io.EOF))
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
		return fail(fmt.Errorf("handoff: message truncated"))
	}
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		return fail(fmt.Errorf("handoff: bad message: %w", err))
	}
	if len(m.FDs) != len(fds) {
		return fail(fmt.Errorf("handoff: %s names %d descriptors, %d came with it", m.Op, len(m.FDs), len(fds)))
	}
	if m.Op == "abort" {
		return fail(fmt.Errorf("handoff aborted by the other daemon: %s", m.Error))
	}
	for _, w := range want {
		if m.Op == w {
			return m, fds, nil
		}
	}
	return fail(fmt.Errorf("handoff: got %q, want %v", m.Op, want))
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

func dup(fd int) int {
	if fd < 0 {
		return -1
	}
	n, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return n
}

// park holds a waiting VM still during a handoff: parked is closed once
// its accept stopped; outcome says whether the successor took it.
type park struct {
	parked  chan struct{}
	outcome chan bool
}

func (v *vm) requestPark() (*park, context.CancelFunc) {
	v.mu.Lock()
	defer v.mu.Unlock()
	p := &park{parked: make(chan struct{}), outcome: make(chan bool, 1)}
	v.park = p
	return p, v.acceptCancel
}

func (v *vm) takePark() *park {
	v.mu.Lock()
	defer v.mu.Unlock()
	p := v.park
	v.park = nil
	return p
}

// hoEntry is one VM of a handoff, on the predecessor's side.
type hoEntry struct {
	v    *vm
	kind string // "serving", "waiting", "done"
	p    *park
	// kept are duplicates held until the successor is done: what the
	// predecessor needs to take the VM back if the handoff fails.
	kept       servingFDs
	keptSock   *os.File
	quiesced   bool
	stopped    bool
	tookBack   bool
	socketPath string
}

// ServeHandoff waits on path for a successor (`aquifer serve
// --handoff-from PATH`) until ctx ends or a handoff completed. Only this
// daemon's uid and root may connect. A failed handoff leaves this daemon
// serving every VM, and it waits for the next successor.
func (d *Daemon) ServeHandoff(ctx context.Context, path string) error {
	l := d.inheritedListener("handoff", path)
	if l == nil {
		var err error
		if l, err = handshake.ListenWith(path, handshake.ListenOptions{Packet: true}); err != nil {
			return fmt.Errorf("handoff socket: %w", err)
		}
	}
	for {
		c, err := l.Accept(ctx)
		if err != nil {
			select {
			case <-d.handedOver:
				return nil
			default:
			}
			l.Close()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		p, err := handshake.PeerOf(c)
		if err != nil || (p.Uid != 0 && int(p.Uid) != os.Getuid()) {
			d.log.Warn("refusing a handoff from another user", "pid", p.Pid, "uid", p.Uid, "err", err)
			c.Close()
			continue
		}
		log := d.log.With("successor_pid", p.Pid)
		err = d.handOff(c, l, path, log)
		c.Close()
		if err == nil {
			return nil
		}
		d.metrics.Handoffs.WithLabelValues("sent", "aborted").Inc()
		log.Error("handoff failed: this daemon serves on", "err", err)
	}
}

// handOff is the predecessor's side of one handoff.
func (d *Daemon) handOff(c *net.UnixConn, hl *handshake.Listener, hpath string, log *slog.Logger) (err error) {
	t0 := time.Now()
	hc := &hoConn{c: c, deadline: t0.Add(d.cfg.HandoffTimeout)}
	hello, _, err := hc.recv("hello")
	if err != nil {
		return err
	}
	if hello.Version != handoffVersion {
		hc.send(hoMsg{Op: "abort", Error: fmt.Sprintf("handoff protocol %d, this daemon speaks %d", hello.Version, handoffVersion)})
		return fmt.Errorf("successor speaks handoff protocol %d", hello.Version)
	}
	if filepath.Clean(hello.SocketDir) != filepath.Clean(d.cfg.SocketDir) || filepath.Clean(hello.StateDir) != filepath.Clean(d.cfg.StateDir) {
		msg := fmt.Sprintf("this daemon's directories are --socket-dir %s --state-dir %s; the successor was given %s and %s: start it with the same ones",
			d.cfg.SocketDir, d.cfg.StateDir, hello.SocketDir, hello.StateDir)
		hc.send(hoMsg{Op: "abort", Error: msg})
		return errors.New(msg)
	}
	d.mu.Lock()
	apiL := d.apiL
	d.mu.Unlock()
	if apiL == nil {
		hc.send(hoMsg{Op: "abort", Error: "the daemon does not serve its API yet"})
		return errors.New("no API listener yet")
	}
	if hello.API != "" && filepath.Clean(hello.API) != filepath.Clean(apiL.Path()) {
		msg := fmt.Sprintf("this daemon's API socket is %s; the successor was given --api %s: start it with the same one", apiL.Path(), hello.API)
		hc.send(hoMsg{Op: "abort", Error: msg})
		return errors.New(msg)
	}
	log.Info("handing every VM over to a successor")

	// Freeze the VM set.
	d.handoffMu.Lock()
	d.frozen = true
	d.handoffMu.Unlock()
	entries, stuck := d.freezeVMs()
	done := false
	defer func() {
		if !done {
			d.takeBack(entries, log)
			d.handoffMu.Lock()
			d.frozen = false
			d.handoffMu.Unlock()
		}
	}()

	if len(stuck) > 0 {
		msg := fmt.Sprintf("VMs %v cannot be handed over (no pidfd of their VMM, or their record could not be written): stop them first, or restart this daemon instead", stuck)
		hc.send(hoMsg{Op: "abort", Error: msg})
		return errors.New(msg)
	}
	// The daemon's own descriptors.
	apiSock, apiLock, err := apiL.Files()
	if err != nil {
		return err
	}
	hoSock, hoLock, err := hl.Files()
	if err != nil {
		apiSock.Close()
		return err
	}
	files := []*os.File{apiSock, apiLock, hoSock, hoLock, d.dirLock, d.stateLock}
	names := []string{"api", "api.lock", "handoff", "handoff.lock", "sockdir.lock", "statedir.lock"}
	var fds []int
	var fnames []string
	for i, f := range files {
		if f != nil {
			fds, fnames = append(fds, int(f.Fd())), append(fnames, names[i])
		}
	}
	d.mu.Lock()
	seq := d.seq
	d.mu.Unlock()
	err = hc.send(hoMsg{Op: "begin", Seq: seq, API: apiL.Path(), Handoff: hpath, FDs: fnames}, fds...)
	for _, f := range []*os.File{apiSock, apiLock, hoSock, hoLock} {
		if f != nil {
			f.Close()
		}
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		m := hoMsg{Op: "vm", Wire: d.wireOf(e.v), Record: e.v.rec}
		var fds []int
		switch e.kind {
		case "serving":
			m.FDs, fds = []string{"uffd", "pidfd"}, []int{e.kept.uffd, e.kept.pidfd}
			if e.kept.hup >= 0 {
				m.FDs, fds = append(m.FDs, "hup"), append(fds, e.kept.hup)
			}
		case "waiting":
			m.FDs, fds = []string{"listener"}, []int{int(e.keptSock.Fd())}
		}
		if err := hc.send(m, fds...); err != nil {
			return err
		}
	}
	if err := hc.send(hoMsg{Op: "sent"}); err != nil {
		return err
	}
	if _, _, err := hc.recv("ready"); err != nil {
		return err
	}
	// Nothing more is installed ahead of faults here.
	for _, e := range entries {
		if e.kind == "serving" {
			e.quiesced = true
			e.v.handedOver.Store(true) // a pre-install cut short is not a failure
			e.v.mu.Lock()
			s := e.v.sess
			e.v.mu.Unlock()
			if s != nil {
				s.Quiesce()
			}
		}
	}
	if err := hc.send(hoMsg{Op: "quiesced"}); err != nil {
		return err
	}
	if _, _, err := hc.recv("serving"); err != nil {
		return err
	}
	// The successor serves: stop.
	for _, e := range entries {
		switch e.kind {
		case "serving":
			e.v.cancel()
		case "waiting":
			e.v.handedOver.Store(true)
			e.p.outcome <- true
		}
	}
	for _, e := range entries {
		if e.kind != "done" {
			<-e.v.done
			e.stopped = true
		}
	}
	if err := hc.send(hoMsg{Op: "stopped"}); err != nil {
		return err
	}
	if _, _, err := hc.recv("done"); err != nil {
		return err
	}
	done = true
	for _, e := range entries {
		closeFDs([]int{e.kept.uffd, e.kept.pidfd, e.kept.hup})
		if e.keptSock != nil {
			e.keptSock.Close()
		}
	}
	hl.Release()
	d.metrics.Handoffs.WithLabelValues("sent", "ok").Inc()
	log.Info("handed every VM over", "vms", len(entries), "took", time.Since(t0))
	close(d.handedOver)
	return nil
}

// freezeVMs stops every waiting VM's accept and lists the VMs with what a
// successor needs of each; stuck names serving VMs it could not be given.
func (d *Daemon) freezeVMs() (out []*hoEntry, stuck []string) {
	d.mu.Lock()
	vms := make([]*vm, 0, len(d.vms))
	for _, v := range d.vms {
		vms = append(vms, v)
	}
	d.mu.Unlock()
	for _, v := range vms {
		e := &hoEntry{v: v, kind: "done", kept: servingFDs{-1, -1, -1}}
		select {
		case <-v.done:
		case <-v.serving:
			e.kind = "serving"
		default:
			p, cancel := v.requestPark()
			if cancel != nil {
				cancel()
			}
			select {
			case <-p.parked:
				e.kind, e.p = "waiting", p
			case <-v.serving:
				v.takePark()
				e.kind = "serving"
			case <-v.done:
			}
		}
		switch e.kind {
		case "serving":
			select {
			case <-v.done:
				e.kind = "done" // exited meanwhile
			default:
			}
		case "waiting":
			v.mu.Lock()
			l := v.listener
			v.mu.Unlock()
			sock, _, err := l.Files()
			if err != nil {
				d.log.Warn("handoff: cannot pass a waiting VM's socket; it stays here", "vm", v.wire.ID, "err", err)
				e.p.outcome <- false
				continue
			}
			e.keptSock, e.socketPath = sock, l.Path()
		}
		if e.kind == "serving" {
			v.waitRecorded() // the successor rewrites the record: this one must be written first
			v.mu.Lock()
			e.kept = servingFDs{uffd: dup(v.fds.uffd), pidfd: dup(v.fds.pidfd), hup: dup(v.fds.hup)}
			v.mu.Unlock()
			if e.kept.uffd < 0 || e.kept.pidfd < 0 || v.rec == nil || v.rec.Phase != vmstate.PhaseServing {
				// Nothing a successor could serve it with.
				closeFDs([]int{e.kept.uffd, e.kept.pidfd, e.kept.hup})
				e.kept = servingFDs{-1, -1, -1}
				e.kind = "done"
				stuck = append(stuck, v.wire.ID)
			}
		}
		out = append(out, e)
	}
	return out, stuck
}

// takeBack ends a failed handoff: waiting VMs accept again, and every VM
// whose serving was quiesced or stopped is taken back from the kept
// descriptors, exactly as a restarted daemon would.
func (d *Daemon) takeBack(entries []*hoEntry, log *slog.Logger) {
	for _, e := range entries {
		v := e.v
		switch e.kind {
		case "waiting":
			if !e.stopped {
				v.handedOver.Store(false)
				e.p.outcome <- false
				e.keptSock.Close()
				continue
			}
			l, err := handshake.Inherit(e.socketPath, e.keptSock, nil)
			if err != nil {
				log.Error("taking a waiting VM back", "vm", v.wire.ID, "err", err)
				continue
			}
			d.adoptWaiting(v.rec, l, api.AdoptedHandoff, log.With("vm", v.wire.ID))
		case "serving":
			if !e.quiesced {
				closeFDs([]int{e.kept.uffd, e.kept.pidfd, e.kept.hup})
				continue
			}
			if !e.stopped {
				v.handedOver.Store(true)
				v.cancel()
				<-v.done
			}
			p, err := vmmproc.FromPidFD(*v.rec.VMM, e.kept.pidfd)
			if err != nil {
				closeFDs([]int{e.kept.uffd, e.kept.pidfd, e.kept.hup})
			}
			d.adoptServing(v.rec, p, e.kept.uffd, e.kept.hup, err, takeover{from: api.AdoptedHandoff, stallFrom: time.Now()}, log.With("vm", v.wire.ID))
		}
	}
}

// receiveHandoff is the successor's side: New with HandoffFrom.
func (d *Daemon) receiveHandoff() (err error) {
	t0 := time.Now()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: d.cfg.HandoffFrom, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("--handoff-from %s: no daemon to take over there (is `aquifer serve` running with this --api?): %w", d.cfg.HandoffFrom, err)
	}
	defer c.Close()
	hc := &hoConn{c: c, deadline: t0.Add(d.cfg.HandoffTimeout)}
	pred, _ := handshake.PeerOf(c)
	d.predecessor = pred.Pid
	log := d.log.With("predecessor_pid", pred.Pid)
	if err := hc.send(hoMsg{Op: "hello", Version: handoffVersion, PID: os.Getpid(), SocketDir: d.cfg.SocketDir, StateDir: d.cfg.StateDir, API: d.cfg.APISocket}); err != nil {
		return err
	}
	begin, fds, err := hc.recv("begin")
	if err != nil {
		return err
	}
	files := map[string]*os.File{}
	for i, n := range begin.FDs {
		files[n] = os.NewFile(uintptr(fds[i]), n)
	}
	d.dirLock, d.stateLock = files["sockdir.lock"], files["statedir.lock"]
	if files["api"] == nil || files["handoff"] == nil || d.dirLock == nil || d.stateLock == nil {
		for _, f := range files {
			f.Close()
		}
		hc.send(hoMsg{Op: "abort", Error: "begin lacks descriptors"})
		return errors.New("handoff: the predecessor sent incomplete descriptors")
	}
	for _, role := range []string{"api", "handoff"} {
		path := begin.API
		if role == "handoff" {
			path = begin.Handoff
		}
		l, err := handshake.Inherit(path, files[role], files[role+".lock"])
		if err != nil {
			hc.send(hoMsg{Op: "abort", Error: err.Error()})
			return err
		}
		d.inherited[role] = l
	}
	d.seq = begin.Seq

	// The VMs.
	type got struct {
		m   hoMsg
		fds map[string]int
		v   *vm
	}
	var vms []*got
	closeAll := func() {
		for _, g := range vms {
			for _, fd := range g.fds {
				unix.Close(fd)
			}
			g.fds = nil
		}
	}
	for {
		m, fds, err := hc.recv("vm", "sent")
		if err != nil {
			closeAll()
			return err
		}
		if m.Op == "sent" {
			break
		}
		g := &got{m: m, fds: map[string]int{}}
		for i, n := range m.FDs {
			g.fds[n] = fds[i]
		}
		vms = append(vms, g)
		if m.Wire == nil || restore.ValidName(m.Wire.ID) != nil {
			closeAll()
			hc.send(hoMsg{Op: "abort", Error: "a VM without an id"})
			return errors.New("handoff: a VM without an id")
		}
	}
	stopped := make(chan struct{})
	var serving sync.WaitGroup
	abort := func(err error) error {
		hc.send(hoMsg{Op: "abort", Error: err.Error()})
		for _, g := range vms {
			if g.v != nil {
				d.discardAdopted(g.v)
			}
		}
		closeAll()
		return err
	}
	// Every serving VM is prepared before anything is promised: its
	// snapshot opened again, the same image, its session created.
	for _, g := range vms {
		m := g.m
		vlog := log.With("vm", m.Wire.ID, "snapshot", m.Wire.Snapshot)
		if len(m.FDs) == 0 || m.Record == nil || m.FDs[0] != "uffd" {
			continue
		}
		rec := m.Record
		if rec.VMM == nil {
			return abort(fmt.Errorf("VM %q: a serving VM without its VMM's identity", m.Wire.ID))
		}
		p, perr := vmmproc.FromPidFD(*rec.VMM, g.fds["pidfd"])
		hup, ok := g.fds["hup"]
		if !ok {
			hup = -1
		}
		if errors.Is(perr, vmmproc.ErrGone) {
			vlog.Info("VM exited during the handoff")
			for _, fd := range g.fds {
				unix.Close(fd)
			}
			g.fds = nil
			continue
		}
		settle := func(ctx context.Context) ([][2]uint64, error) {
			select {
			case <-stopped:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return vmstate.ReadRemoves(d.removesPath(rec.ID))
		}
		if perr != nil {
			for _, fd := range g.fds {
				unix.Close(fd)
			}
			g.fds = nil
			return abort(fmt.Errorf("VM %q: %w", m.Wire.ID, perr))
		}
		v := d.adoptServing(rec, p, g.fds["uffd"], hup, nil, takeover{from: api.AdoptedHandoff, stallFrom: t0, settle: settle, deferStart: true}, vlog)
		g.fds = nil // owned by the VM now
		g.v = v
		if err := d.save(rec); err != nil {
			return abort(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.HandoffTimeout)
		_, err := d.prepareAdopted(ctx, v, p, settle, vlog)
		cancel()
		if err != nil {
			return abort(fmt.Errorf("VM %q: %w", m.Wire.ID, err))
		}
		serving.Add(1)
		v.mu.Lock()
		v.servingHook = sync.OnceFunc(serving.Done)
		v.mu.Unlock()
	}
	if err := hc.send(hoMsg{Op: "ready"}); err != nil {
		return abort(err)
	}
	if _, _, err := hc.recv("quiesced"); err != nil {
		return abort(err)
	}
	for _, g := range vms {
		if g.v != nil {
			d.startAdopted(g.v)
		}
	}
	waitAll := make(chan struct{})
	go func() { serving.Wait(); close(waitAll) }()
	select {
	case <-waitAll:
	case <-time.After(time.Until(hc.deadline)):
		log.Warn("handoff: not every fault loop started in time; taking over anyway")
	}
	if err := hc.send(hoMsg{Op: "serving"}); err != nil {
		log.Warn("handoff: the predecessor went away; serving its VMs", "err", err)
	}
	if _, _, err := hc.recv("stopped"); err != nil {
		log.Warn("handoff: the predecessor did not confirm it stopped (it may have died); serving its VMs", "err", err)
	}
	close(stopped)
	// Waiting VMs, and the record of VMs that are done.
	for _, g := range vms {
		m := g.m
		switch {
		case g.v != nil:
		case len(m.FDs) == 1 && m.FDs[0] == "listener" && m.Record != nil:
			l, err := handshake.Inherit(m.Record.Socket, os.NewFile(uintptr(g.fds["listener"]), m.Record.Socket), nil)
			g.fds = nil
			if err != nil {
				log.Error("handoff: a waiting VM's socket", "vm", m.Wire.ID, "err", err)
				continue
			}
			d.adoptWaiting(m.Record, l, api.AdoptedHandoff, log.With("vm", m.Wire.ID))
		case len(m.FDs) == 0:
			v := newVM(*m.Wire)
			close(v.ready)
			close(v.done)
			close(v.serving)
			d.register(v)
		}
	}
	if err := hc.send(hoMsg{Op: "done"}); err != nil {
		log.Warn("handoff: telling the predecessor it may go", "err", err)
	}
	d.metrics.Handoffs.WithLabelValues("received", "ok").Inc()
	d.metrics.HandoffSeconds.Observe(time.Since(t0).Seconds())
	log.Info("took every VM over from the predecessor", "vms", len(vms), "took", time.Since(t0))
	return nil
}

// inheritedListener returns (and forgets) a listener a handoff gave this
// daemon for path.
func (d *Daemon) inheritedListener(role, path string) *handshake.Listener {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.inherited[role]
	if l == nil {
		return nil
	}
	if filepath.Clean(l.Path()) != filepath.Clean(path) {
		d.log.Warn("the predecessor's socket is elsewhere; listening anew", "role", role, "predecessor", l.Path(), "this", path)
		return nil
	}
	delete(d.inherited, role)
	return l
}
