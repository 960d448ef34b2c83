package handler

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

// span is a stretch of pages inside one region.
type span struct {
	r     *region
	first uint64 // page index in the region
	n     uint64
}

// spans splits npages pages starting at memory-file offset off by region.
func (h *Handler) spans(off uint64, npages uint64) ([]span, error) {
	var out []span
	for npages > 0 {
		var hit *region
		for _, r := range h.regions {
			if off >= r.Offset && off < r.Offset+r.Size {
				hit = r
				break
			}
		}
		if hit == nil {
			return nil, fmt.Errorf("memory-file offset %d is in no region", off)
		}
		first := (off - hit.Offset) / hit.PageSize
		n := min(npages, hit.Size/hit.PageSize-first)
		out = append(out, span{hit, first, n})
		npages -= n
		off += n * hit.PageSize
	}
	return out, nil
}

// Install copies npages consecutive pages whose content is at src (off
// the Go heap) to the guest pages of memory-file offset off onward, ahead of
// any fault: the pre-install of hot pages and the prefetch of cold ones.
// Pages inside a removed (ballooned) range and pages already present are
// skipped. Copies run with DONTWAKE and the whole range is woken at the end,
// so a vCPU that faulted on one of these pages meanwhile is released. It
// returns the number of pages installed.
func (h *Handler) Install(off uint64, src uintptr, npages uint64) (uint64, error) {
	return h.install(off, src, npages, true)
}

// InstallQuiet is Install without the final UFFDIO_WAKE. It is enough
// whenever this handler's fault loop is running: a vCPU that faulted on one
// of these pages has a pending event, and serving it either copies the page
// (and wakes) or finds it present (EEXIST) and wakes. It saves one ioctl per
// run, which matters when a hot set is installed as thousands of short runs.
func (h *Handler) InstallQuiet(off uint64, src uintptr, npages uint64) (uint64, error) {
	return h.install(off, src, npages, false)
}

func (h *Handler) install(off uint64, src uintptr, npages uint64, wake bool) (uint64, error) {
	sp, err := h.spans(off, npages)
	if err != nil {
		return 0, err
	}
	var installed uint64
	for _, s := range sp {
		ps := s.r.PageSize
		n, err := h.installSpan(s, src)
		installed += n
		if err != nil {
			return installed, err
		}
		if wake {
			base := uintptr(s.r.BaseHostVirtAddr + s.first*ps)
			if err := h.u.Wake(base, uintptr(s.n*ps)); err != nil && !uffd.IsGone(err) {
				return installed, err
			}
		}
		src += uintptr(s.n * ps)
	}
	return installed, nil
}

func (h *Handler) installSpan(s span, src uintptr) (uint64, error) {
	return h.fillSpan(s, func(dst, at, n uintptr) (int64, error) {
		c, err := h.u.Copy(dst, src+at, n, true)
		atomic.AddUint64(&h.stats.BytesCopied, uint64(c))
		atomic.AddUint64(&h.stats.Installed, uint64(c)/s.r.PageSize)
		return c, err
	})
}

// ZeroQuiet maps the kernel's zero page over npages consecutive guest pages
// from memory-file offset off onward (4 KiB pages), ahead of faults and
// without a final wake (as InstallQuiet): for pages that are zero in the
// snapshot. They then read as zeros without a fault, and the kernel copies
// one on its first write, without a round trip to this handler. Unlike
// LeaveToKernel it does not split the VM's mapping (one UFFDIO_ZEROPAGE
// under the mmap lock taken for reading, against an UNREGISTER's VMA split
// under the lock taken for writing: a third of the CPU for a short run).
// Removed and present pages are skipped. It returns the pages mapped.
func (h *Handler) ZeroQuiet(off uint64, npages uint64) (uint64, error) {
	sp, err := h.spans(off, npages)
	if err != nil {
		return 0, err
	}
	var mapped uint64
	for _, s := range sp {
		if s.r.PageSize != handshake.PageSize4K {
			return mapped, fmt.Errorf("zero pages are mapped on 4 KiB pages only, not %d-byte ones", s.r.PageSize)
		}
		n, err := h.fillSpan(s, func(dst, _, n uintptr) (int64, error) { return h.u.ZeroPages(dst, n, true) })
		mapped += n
		atomic.AddUint64(&h.stats.ZeroMapped, n)
		if err != nil {
			return mapped, err
		}
	}
	return mapped, nil
}

// fillSpan fills the non-removed, missing pages of s with fill(dst, at, n):
// dst the guest address, at its offset from the span's start, n the bytes.
// fill returns the bytes it filled before an error, as UFFDIO_COPY and
// UFFDIO_ZEROPAGE do.
func (h *Handler) fillSpan(s span, fill func(dst, at, n uintptr) (int64, error)) (uint64, error) {
	ps := s.r.PageSize
	var installed uint64
	p, end := s.first, s.first+s.n
	for p < end {
		gen := h.curGen()
		h.removeMu.RLock()
		// Skip removed pages, then take the longest non-removed stretch.
		for p < end && s.r.isRemoved(p) {
			p++
		}
		q := p
		for q < end && !s.r.isRemoved(q) {
			q++
		}
		if p == q {
			h.removeMu.RUnlock()
			break
		}
		dst := uintptr(s.r.BaseHostVirtAddr + p*ps)
		n, err := fill(dst, uintptr((p-s.first)*ps), uintptr((q-p)*ps))
		done := uint64(n) / ps
		s.r.setPresent(p, done)
		if done > 0 {
			h.probe.Store(uint64(dst) + (done-1)*ps + 1)
		}
		h.removeMu.RUnlock()
		installed += done
		p += done
		switch {
		case err == nil:
		case uffd.IsExist(err) && s.r.exhausted(p):
			return installed, h.poolExhausted(uintptr(s.r.BaseHostVirtAddr+p*ps), err)
		case uffd.IsExist(err):
			p++ // that page was present (a fault beat us); go on after it
		case uffd.IsAgain(err):
			atomic.AddUint64(&h.stats.Retries, 1)
			h.waitGen(gen)
		case uffd.IsGone(err), errors.Is(err, unix.ENOENT):
			// ESRCH: the VM's mm is gone; ENOENT: its mapping is (exit).
			h.gone.Store(true)
			h.Stop()
			return installed, uffd.ErrGone
		default:
			return installed, err
		}
	}
	return installed, nil
}

// LeaveToKernel unregisters the guest pages of npages pages from memory-file
// offset off, so the kernel itself fills them with zero pages on first touch
// without a round trip to the handler. Only for pages that are zero in the
// snapshot and not yet present. The kernel wakes any fault pending there.
func (h *Handler) LeaveToKernel(off uint64, npages uint64) error {
	sp, err := h.spans(off, npages)
	if err != nil {
		return err
	}
	for _, s := range sp {
		ps := s.r.PageSize
		if err := h.u.Unregister(uintptr(s.r.BaseHostVirtAddr+s.first*ps), uintptr(s.n*ps)); err != nil {
			if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.EINVAL) {
				// The VM's mm is gone or its mapping changed: it is exiting.
				return uffd.ErrGone
			}
			return err
		}
		atomic.AddUint64(&h.stats.Unregistered, s.n)
	}
	return nil
}
