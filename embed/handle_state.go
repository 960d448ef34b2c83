package embed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/handler"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/pager"
	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/vmmproc"
	"github.com/aquifer-pool/aquifer/vmstate"
)

// `aquifer handle --state FILE` records the VM it serves (vmstate) once
// the handshake is done, and its balloon ranges in FILE.removes; a
// handler restarted with `--adopt PID --state FILE` takes the VM back from
// its VMM and serves it on. The record is removed when the VM exits (not
// when the handler is stopped or killed: the VM still runs).

// handleRecord is the durable state of the VM `aquifer handle` serves.
type handleRecord struct {
	vmstate.Record
	Socket string `json:"socket"`
	// Mem and MemFile name a raw memory file (its path and identity), or
	// Image and ImageID an Aquifer image.
	Mem     string     `json:"mem,omitempty"`
	MemFile *fileIdent `json:"mem_file,omitempty"`
	Image   string     `json:"image,omitempty"`
	ImageID string     `json:"image_id,omitempty"`
	Started time.Time  `json:"started"`
}

// fileIdent names one version of a file.
type fileIdent struct {
	Dev, Ino uint64
	Size     int64
	MtimeNS  int64
}

func identOf(path string) (*fileIdent, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("%s: no inode", path)
	}
	return &fileIdent{Dev: uint64(sys.Dev), Ino: sys.Ino, Size: st.Size(), MtimeNS: st.ModTime().UnixNano()}, nil
}

// handleState is a served VM's record and REMOVE log.
type handleState struct {
	path string
	log  *vmstate.RemoveLog
}

// onRemove logs a REMOVE range (nil state: nothing to do).
func (s *handleState) onRemove(start, end uint64) {
	if s != nil && s.log != nil {
		s.log.Append(start, end)
	}
}

// finish removes the record when the VM is gone; a handler that was only
// stopped leaves it for its successor (--adopt).
func (s *handleState) finish(st handler.Stats, err error) {
	if s == nil {
		return
	}
	s.log.Close()
	if err == nil && st.Exit == "stopped" {
		return
	}
	os.Remove(s.path)
	os.Remove(s.path + ".removes")
}

// source names what c serves, for the record.
func (c *HandlerConfig) source(rec *handleRecord, snap *restore.Snapshot) error {
	if c.Image != "" {
		rec.Image, rec.ImageID = c.Image, snap.Image.ID()
		return nil
	}
	id, err := identOf(c.Mem)
	rec.Mem, rec.MemFile = c.Mem, id
	return err
}

// recordVM writes the record of a completed handshake (--state).
func (c *HandlerConfig) recordVM(vm *handshake.VM, u *uffd.FD, snap *restore.Snapshot) (*handleState, error) {
	if c.State == "" {
		return nil, nil
	}
	base, err := vmstate.NewRecord()
	if err != nil {
		return nil, err
	}
	rec := &handleRecord{Record: base, Socket: c.Socket, Started: time.Now()}
	if err := c.source(rec, snap); err != nil {
		return nil, err
	}
	if vm.Watch.PidFD < 0 {
		return nil, errors.New("no pidfd of the VMM: the VM cannot be re-adopted")
	}
	id, err := vmmproc.Identify(vm.Peer.Pid, vm.Watch.PidFD)
	if err != nil {
		return nil, err
	}
	fid, err := vmmproc.FileIDOf(u.Fd())
	if err != nil {
		return nil, err
	}
	rec.Serve(id, fid, vm.Dialect, vm.Regions)
	os.Remove(c.State + ".removes") // a previous VM's
	l, err := vmstate.OpenRemoveLog(c.State + ".removes")
	if err != nil {
		return nil, err
	}
	if err := vmstate.Save(c.State, rec); err != nil {
		l.Close()
		return nil, err
	}
	return &handleState{path: c.State, log: l}, nil
}

// AdoptResult says how a restarted handler took its VM back.
type AdoptResult struct {
	VMM vmmproc.Identity
	// Unanswered faults the previous handler had read (woken here).
	Unanswered uint64
	// Removed ranges replayed from the log.
	Removed int
	// Stall is from this process's start to the first fault served here
	// (0: none served).
	Stall time.Duration
}

// runAdopt serves the VM recorded in c.State, taken back from its VMM.
func runAdopt(ctx context.Context, c HandlerConfig) (*HandlerResult, error) {
	rec := &handleRecord{}
	if err := vmstate.Load(c.State, rec); err != nil {
		return nil, fieldErr("state", "%s: %w", c.State, err)
	}
	if rec.Phase != vmstate.PhaseServing {
		return nil, fieldErr("state", "%s records no completed handshake: nothing to adopt", c.State)
	}
	if rec.VMM.PID != c.Adopt {
		return nil, fieldErr("adopt", "%s records the VM of pid %d, not %d", c.State, rec.VMM.PID, c.Adopt)
	}
	var snap *restore.Snapshot
	switch {
	case c.Image != "":
		var err error
		if snap, err = restore.OpenLocal("image", c.Image); err != nil {
			return nil, err
		}
		if snap.Image.ID() != rec.ImageID {
			return nil, fieldErr("image", "%s is not the image the VM was served (%s, ID %s): give that one", c.Image, rec.Image, rec.ImageID)
		}
	default:
		id, err := identOf(c.Mem)
		if err != nil {
			return nil, fieldErr("mem", "%w", err)
		}
		if rec.MemFile == nil || *id != *rec.MemFile {
			return nil, fieldErr("mem", "%s is not the memory file the VM was served (%s, unchanged since): give that one", c.Mem, rec.Mem)
		}
	}
	p, fd, err := rec.Take()
	if err != nil {
		if errors.Is(err, vmmproc.ErrGone) {
			os.Remove(c.State)
			os.Remove(c.State + ".removes")
		}
		return nil, fmt.Errorf("adopting pid %d: %w", c.Adopt, err)
	}
	defer p.Close()
	u := uffd.FromFd(fd)
	defer u.Close()
	ar := &AdoptResult{VMM: *rec.VMM}
	_, ar.Unanswered, _ = vmmproc.Pending(fd)
	removed, err := vmstate.ReadRemoves(c.State + ".removes")
	if err != nil {
		return nil, fieldErr("state", "%w", err)
	}
	ar.Removed = len(removed)
	l, err := vmstate.OpenRemoveLog(c.State + ".removes")
	if err != nil {
		return nil, err
	}
	st := &handleState{path: c.State, log: l}
	regions := rec.HandshakeRegions()
	c.Logger.Info("re-adopting the VM", "vmm", rec.VMM.String(), "unanswered_faults", ar.Unanswered, "removed_ranges", len(removed))
	res := &HandlerResult{Adopted: ar}
	if snap != nil {
		s, err := pager.New(snap, pager.Options{Workers: c.Workers, Logger: c.Logger, OnRemove: st.onRemove, Adopt: &pager.Adopt{Removed: removed}})
		if err != nil {
			return nil, err
		}
		defer s.Close()
		rep, err := s.Serve(ctx, u, regions, p.PidFD, -1)
		res.Report = rep
		if rep != nil {
			res.Stats = rep.Handler
		}
		if err == nil {
			err = s.ReadyErr()
		}
		ar.Stall = sinceStart(s.FirstServed())
		st.finish(res.Stats, err)
		return res, err
	}
	m, err := handler.OpenMemFile(c.Mem)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	h, err := handler.New(u, regions, m, handler.Options{Workers: c.Workers, Logger: c.Logger, NoHangup: true, HangupFD: -1, OnRemove: st.onRemove})
	if err != nil {
		return nil, err
	}
	defer h.Close()
	for _, r := range removed {
		h.MarkRemoved(r[0], r[1])
	}
	type served struct {
		st  handler.Stats
		err error
	}
	done := make(chan served, 1)
	go func() {
		st, err := h.Serve(ctx, p.PidFD)
		done <- served{st, err}
	}()
	if err := h.WakeAll(); err != nil {
		c.Logger.Warn("waking the faults the previous handler left", "err", err)
	}
	r := <-done
	res.Stats = r.st
	ar.Stall = sinceStart(h.FirstServed())
	st.finish(r.st, r.err)
	return res, r.err
}

func sinceStart(t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return t.Sub(processStart)
}
