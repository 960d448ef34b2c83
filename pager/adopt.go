package pager

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Adopt takes over a VM that another pager served: a restarted daemon
// that took the VM's userfaultfd back from its VMM, or the successor of a
// planned handoff, which received it from its predecessor. The session
// then serves exactly as a fresh one would — hot pages still missing
// (pre-installing a page that is present is EEXIST: harmless), zero runs
// not yet left to the kernel, cold extents, each page verified against
// the image's digests — after three steps of its own:
//
//  1. Before the fault loop starts, the REMOVE ranges the VM reported to
//     earlier pagers (Removed) are marked: they read as zeros forever.
//  2. Once the fault loop runs, every registered range is woken
//     (UFFDIO_WAKE): vCPUs asleep on faults the previous pager read but
//     never served fault again and are served here. Serving is called.
//  3. Settle, if set, waits until no other pager serves the VM (the
//     handoff's predecessor stopped) and returns the ranges it logged
//     meanwhile; they are marked and every range is woken once more.
//     Only then does anything get installed ahead of faults: an install
//     must never race a REMOVE that another process read.
type Adopt struct {
	Removed [][2]uint64
	// Serving, if set, is called once the fault loop runs here.
	Serving func()
	// Settle, if set, blocks until this session is the VM's only pager
	// and returns the REMOVE ranges logged meanwhile.
	Settle func(ctx context.Context) ([][2]uint64, error)
}

// errQuiesced ends a pre-install that Quiesce stopped.
var errQuiesced = errors.New("stopped installing ahead of faults (handing the VM over)")

// markAdopted marks the predecessor's REMOVE ranges before serving.
func (s *Session) markAdopted() {
	if s.opts.Adopt == nil {
		return
	}
	for _, r := range s.opts.Adopt.Removed {
		s.h.MarkRemoved(r[0], r[1])
	}
}

// takeOver runs steps 2 and 3 of Adopt (nothing without it).
func (s *Session) takeOver(ctx context.Context) error {
	a := s.opts.Adopt
	if a == nil {
		return nil
	}
	if err := s.h.WakeAll(); err != nil {
		return fmt.Errorf("waking the faults a previous pager left: %w", err)
	}
	if a.Serving != nil {
		a.Serving()
	}
	if a.Settle == nil {
		return nil
	}
	late, err := a.Settle(ctx)
	if err != nil {
		return fmt.Errorf("taking the VM over: %w", err)
	}
	for _, r := range late {
		s.h.MarkRemoved(r[0], r[1])
	}
	s.settled.Store(true)
	if err := s.h.WakeAll(); err != nil {
		return fmt.Errorf("waking the faults a previous pager left: %w", err)
	}
	return nil
}

// unsettled says another pager may still serve the VM (Adopt.Settle has
// not returned): nothing may be installed ahead of faults yet.
func (s *Session) unsettled() bool {
	return s.opts.Adopt != nil && s.opts.Adopt.Settle != nil && !s.settled.Load()
}

// FirstServed is when this session first served a fault (zero: none yet).
func (s *Session) FirstServed() time.Time {
	if h := s.live.Load(); h != nil {
		return h.FirstServed()
	}
	return time.Time{}
}

// Quiesce stops everything this session installs ahead of faults — the
// pre-install, zero runs, prefetch, the rest of a demand-read cold extent
// — and waits for installs in flight; demand faults are still served.
// The predecessor in a handoff calls it before its successor serves, so
// nothing it installs can race a REMOVE only the successor read.
func (s *Session) Quiesce() {
	s.quiesced.Store(true)
	s.bgMu.Lock()
	s.bgMu.Unlock()
}

func (s *Session) bgEnter() bool {
	s.bgMu.RLock()
	if s.quiesced.Load() || s.unsettled() {
		s.bgMu.RUnlock()
		return false
	}
	return true
}

func (s *Session) bgExit() { s.bgMu.RUnlock() }
