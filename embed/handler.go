package embed

import (
	"context"
	"errors"
	"fmt"
	"github.com/aquifer-pool/aquifer/internal/prio"
	"log/slog"
	"time"

	"github.com/aquifer-pool/aquifer/baseline"
	"github.com/aquifer-pool/aquifer/handler"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/internal/atomicfile"
	"github.com/aquifer-pool/aquifer/pager"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/wset"
)

// HandlerConfig describes a single-VM UFFD handler (`aquifer handle`):
// one socket, one Firecracker, pages from a raw memory file or an Aquifer
// image on local disk. Exactly one of Mem and Image is set.
type HandlerConfig struct {
	// Socket is the path Firecracker's mem_backend.backend_path names.
	Socket string
	// Mem is a raw Firecracker memory file; every fault is served from it.
	Mem string
	// Record (with Mem) writes the VM's working set here when it exits.
	Record string
	// REAPWS (with Mem) is a REAP working-set file installed whole at the
	// first fault (the REAP baseline).
	REAPWS string
	// Image is an Aquifer image served by the pager (hot set pre-installed).
	Image string
	// ReadyFile (with Image) is created once the hot set is installed.
	ReadyFile string
	// VMMUID is the uid Firecracker runs as; -1 means this process's uid.
	VMMUID int
	// Workers serve faults (default 2).
	Workers int
	// AcceptTimeout bounds the wait for Firecracker (0: until ctx ends).
	AcceptTimeout time.Duration
	// State, if set, records the VM once its handshake is done (and its
	// balloon ranges in State.removes), so that a restarted handler can
	// take it back (Adopt); removed when the VM exits (handle_state.go).
	State string
	// Adopt is the pid of a VMM whose VM State records: instead of
	// waiting for a handshake, take its userfaultfd back and serve on.
	Adopt int
	// Nice is the nice value every thread of the handler runs at (0: as
	// started; see Config.Nice).
	Nice   int
	Logger *slog.Logger
}

// ErrHandshake is wrapped by errors in what the VMM sent (malformed
// region list, wrong fd count, regions that do not fit the memory).
var ErrHandshake = errors.New("bad handshake")

// HandlerResult summarises a served VM.
type HandlerResult struct {
	Stats handler.Stats
	// Report is the pager's report (Image only).
	Report *pager.Report
	// RecordedPages is the working set written to Record.
	RecordedPages int
	// Adopted says how the VM was taken back (Adopt only).
	Adopted *AdoptResult
	// REAPFetch is how long reading the REAP working-set file took
	// (REAPWS only; done before the socket listens).
	REAPFetch time.Duration
}

func (c *HandlerConfig) validate() error {
	if err := prio.Check(c.Nice); err != nil {
		return fieldErr("nice", "%v", err)
	}
	if c.Adopt < 0 {
		return fieldErr("adopt", "%d is not a pid", c.Adopt)
	}
	if c.Adopt > 0 {
		if c.State == "" {
			return fieldErr("adopt", "needs --state, the record the VM's previous handler wrote")
		}
		if c.Record != "" || c.REAPWS != "" || c.ReadyFile != "" {
			return fieldErr("adopt", "--record, --reap-ws and --ready-file need the whole restore: they cannot be combined with --adopt")
		}
	} else if c.Socket == "" {
		return fieldErr("socket", "no socket path")
	}
	if (c.Mem == "") == (c.Image == "") {
		return errors.New("give exactly one of --mem (raw memory file) and --image (Aquifer image)")
	}
	if c.Image != "" && (c.Record != "" || c.REAPWS != "") {
		return fieldErr("image", "--record and --reap-ws work with --mem only")
	}
	if c.Mem != "" && c.ReadyFile != "" {
		return fieldErr("ready-file", "works with --image only (a raw memory file has no hot set to wait for)")
	}
	if c.REAPWS != "" && c.Record != "" {
		return fieldErr("reap-ws", "cannot be combined with --record")
	}
	if c.Workers == 0 {
		c.Workers = 2
	}
	if c.Workers < 0 {
		return fieldErr("workers", "%d: want at least 1", c.Workers)
	}
	if c.VMMUID < -1 {
		return fieldErr("vmm-uid", "%d is not a uid", c.VMMUID)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// RunHandler serves one VM until it exits (or ctx ends).
func RunHandler(ctx context.Context, c HandlerConfig) (*HandlerResult, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	if err := raiseNice(c.Nice); err != nil {
		return nil, err
	}
	if c.Adopt > 0 {
		return runAdopt(ctx, c)
	}
	if c.Image != "" {
		return runImage(ctx, c)
	}
	var src handler.Source
	var reap *baseline.REAPSource
	if c.REAPWS != "" {
		// REAP: the working-set file is fetched before the load.
		r, err := baseline.OpenREAP(c.Mem, c.REAPWS)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		src, reap = r, r
	} else {
		m, err := handler.OpenMemFile(c.Mem)
		if err != nil {
			return nil, err
		}
		defer m.Close()
		src = m
	}
	vm, u, err := accept(ctx, c, src.Size())
	if err != nil {
		return nil, err
	}
	defer vm.Close()
	defer u.Close()
	if reap != nil && reap.PageSize() != vm.Regions[0].PageSize {
		return nil, restore.Mark(ErrHandshake, fmt.Errorf("the REAP working set %s has %d-byte pages, the guest %d-byte pages (build it with aquifer baseline reap --page-size)", c.REAPWS, reap.PageSize(), vm.Regions[0].PageSize))
	}
	st, err := c.recordVM(vm, u, nil)
	if err != nil {
		c.Logger.Warn("--state: this VM cannot be re-adopted", "err", err)
	}
	h, err := handler.New(u, vm.Regions, src, handler.Options{Workers: c.Workers, Record: c.Record != "", Logger: c.Logger,
		HangupFD: vm.Watch.HangupFD, NoHangup: vm.Watch.HangupFD < 0, OnRemove: st.onRemove})
	if err != nil {
		return nil, restore.Mark(ErrHandshake, err)
	}
	defer h.Close()
	if reap != nil {
		reap.Attach(h)
	}
	res := &HandlerResult{}
	if reap != nil {
		res.REAPFetch = reap.Fetch
	}
	res.Stats, err = h.Serve(ctx, vm.Watch.PidFD)
	st.finish(res.Stats, err)
	if err != nil {
		return res, err
	}
	if c.Record != "" {
		tr := h.Trace()
		// Bind the recording to the memory it was made from (read once more,
		// after the VM is gone, so the restore it records is not slowed).
		if fp, err := wset.FingerprintFile(c.Mem); err != nil {
			c.Logger.Warn("the working set is written unbound (convert will warn)", "err", err)
		} else if err := tr.Bind(fp); err != nil {
			return res, fmt.Errorf("writing working set: %w", err)
		}
		if err := wset.WriteFile(c.Record, tr); err != nil {
			return res, fmt.Errorf("writing working set: %w", err)
		}
		res.RecordedPages = len(tr.Accesses)
	}
	return res, nil
}

func runImage(ctx context.Context, c HandlerConfig) (*HandlerResult, error) {
	snap, err := restore.OpenLocal("image", c.Image)
	if err != nil {
		return nil, err
	}
	var st *handleState
	s, err := pager.New(snap, pager.Options{Workers: c.Workers, Logger: c.Logger, OnRemove: func(start, end uint64) { st.onRemove(start, end) }})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	vm, u, err := accept(ctx, c, int64(snap.Image.MemSize()))
	if err != nil {
		return nil, err
	}
	defer vm.Close()
	defer u.Close()
	if st, err = c.recordVM(vm, u, snap); err != nil {
		c.Logger.Warn("--state: this VM cannot be re-adopted", "err", err)
	}
	if c.ReadyFile != "" {
		go func() {
			<-s.Ready()
			if s.ReadyErr() == nil {
				if err := atomicfile.WriteFile(c.ReadyFile, []byte("ready\n"), 0o600); err != nil {
					c.Logger.Error("writing the ready file", "file", c.ReadyFile, "err", err)
				}
			}
		}()
	}
	rep, err := s.Serve(ctx, u, vm.Regions, vm.Watch.PidFD, vm.Watch.HangupFD)
	res := &HandlerResult{Report: rep}
	if rep != nil {
		res.Stats = rep.Handler
	}
	if err == nil {
		err = s.ReadyErr()
	}
	st.finish(res.Stats, err)
	return res, err
}

// accept listens on the socket and completes Firecracker's handshake.
func accept(ctx context.Context, c HandlerConfig, memSize int64) (*handshake.VM, *uffd.FD, error) {
	// A VMM of another uid (the jailer's) must be able to connect: the
	// socket is given to it before it appears.
	l, err := handshake.ListenWith(c.Socket, handshake.ListenOptions{Owner: c.VMMUID})
	if err != nil {
		return nil, nil, err
	}
	defer l.Close() // Firecracker connects exactly once
	c.Logger.Info("waiting for Firecracker", "socket", c.Socket, "mem_bytes", memSize)
	if c.AcceptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.AcceptTimeout)
		defer cancel()
	}
	vm, err := handshake.Accept(ctx, l, handshake.AcceptOptions{MemSize: memSize, UID: c.VMMUID, Logger: c.Logger}, nil)
	if err != nil {
		if ctx.Err() == nil {
			err = restore.Mark(ErrHandshake, err)
		}
		return nil, nil, err
	}
	u := uffd.FromFd(vm.UFFD)
	vm.UFFD = -1
	c.Logger.Info("handshake", "peer_pid", vm.Peer.Pid, "dialect", vm.Dialect.String(), "regions", len(vm.Regions))
	return vm, u, nil
}
