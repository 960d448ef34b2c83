package guest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/hugetlb"
	"github.com/aquifer-pool/aquifer/offheap"
	"golang.org/x/sys/unix"
)

// 2 MiB guests: Firecracker's huge_pages "2M" backs guest memory with
// anonymous MAP_PRIVATE|MAP_NORESERVE|MAP_HUGETLB|MAP_HUGE_2MB memory (taken
// from the host's hugetlb pool on first touch: vm.nr_hugepages must cover
// what the guest touches), sends page_size 2097152 in the handshake (1.7+
// dialects) and restores such a snapshot only through UFFD: its File
// backend refuses hugetlbfs snapshots. The emulator does the same.
//
// A trace of 4 KiB pages replays on a 2 MiB guest at 4 KiB precision (the
// first touch of any 4 KiB page of a huge page faults the whole huge page
// in); after the replay every huge page the trace touched is compared
// whole, every one of its 2 MiB, with the snapshot (and the run's own
// writes): what the handler installed beyond the bytes the trace read is
// checked too.
//
// Balloon: Firecracker's balloon reports guest 4 KiB frames and discards
// them with madvise(MADV_DONTNEED). On hugetlb memory the kernel refuses a
// range whose start is not 2 MiB aligned (EINVAL: Firecracker logs it and
// the memory is not reclaimed) and discards only the whole huge pages of
// an aligned range (its end rounded down). The emulator makes the same
// call, so only what the kernel really discarded reads as zeros afterwards
// and a handler sees exactly the REMOVE events Firecracker would cause.

// guestPageSize checks the guest page size a config asks for against the
// trace's page size ps and the backend.
func guestPageSize(cfg Config, ps uint64) (uint64, error) {
	gps := cfg.PageSize
	if gps == 0 {
		gps = ps
	}
	if gps != handshake.PageSize4K && gps != hugetlb.PageSize {
		return 0, fmt.Errorf("page size %d: a Firecracker guest has 4 KiB or 2 MiB (hugetlbfs) pages", gps)
	}
	if gps < ps {
		return 0, fmt.Errorf("a trace of %d-byte pages cannot be replayed on a guest of %d-byte pages", ps, gps)
	}
	if gps == hugetlb.PageSize {
		switch cfg.Backend {
		case BackendUffd, BackendWarm:
		case BackendFile:
			return 0, errors.New(`Firecracker refuses the File memory backend for a huge_pages "2M" snapshot (hugetlbfs-backed microVMs restore only through UFFD): use --backend uffd`)
		default:
			return 0, fmt.Errorf("backend %q maps the memory file and cannot back a 2 MiB (hugetlbfs) guest: use --backend uffd", cfg.Backend)
		}
	}
	return gps, nil
}

// inflateHuge discards a balloon range of a 2 MiB guest as Firecracker
// does: one madvise(MADV_DONTNEED) per region the range crosses. The
// kernel's refusal of an unaligned start is not an error (Firecracker logs
// it and goes on); what was really discarded is recorded.
func (v *vm) inflateHuge(b Balloon) error {
	for off := b.Offset; off < b.Offset+b.Len; {
		addr, room, ok := v.at(off)
		if !ok {
			return fmt.Errorf("balloon offset %d outside guest memory", off)
		}
		n := min(b.Offset+b.Len-off, room)
		if v.cfg.Backend == BackendUffd {
			err := unix.Madvise(offheap.At(addr, int(n)), unix.MADV_DONTNEED)
			switch {
			case err == nil:
				if end := off + n&^(v.gps-1); end > off {
					v.discarded = append(v.discarded, [2]uint64{off, end})
				}
			case errors.Is(err, unix.EINVAL) && uint64(addr)%v.gps != 0:
				// Not reclaimed: the range starts inside a huge page.
			default:
				return fmt.Errorf("balloon madvise: %w", err)
			}
		}
		off += n
	}
	v.shadowMu.Lock()
	for p := range v.shadow {
		if v.discardedPage(p) {
			delete(v.shadow, p)
		}
	}
	v.shadowMu.Unlock()
	for _, d := range v.discarded {
		v.reclaimed += d[1] - d[0]
	}
	v.ballooned.Store(true)
	return nil
}

func (v *vm) discardedPage(p uint64) bool {
	off := p * v.ps
	for _, d := range v.discarded {
		if off >= d[0] && off+v.ps <= d[1] {
			return true
		}
	}
	return false
}

// verifyWhole compares every guest page larger than the trace's pages that
// the trace touched, whole, with the snapshot overlaid with this run's
// writes (zeros where the balloon discarded it).
func (v *vm) verifyWhole(rep *Report) {
	rep.BalloonReclaimed = v.reclaimed
	if v.gps == v.ps || v.cfg.NoVerify {
		return
	}
	per := v.gps / v.ps
	seen := map[uint64]bool{}
	want := make([]byte, v.gps)
	for _, a := range v.cfg.Trace.Accesses {
		gp := a.Page / per
		if seen[gp] {
			continue
		}
		seen[gp] = true
		addr, ok := v.hostAddr(gp * per)
		if !ok {
			continue
		}
		got := offheap.At(addr, int(v.gps))
		copy(want, v.ref.B[gp*v.gps:(gp+1)*v.gps])
		for k := uint64(0); k < per; k++ {
			p := gp*per + k
			if v.inBalloon(p) {
				clear(want[k*v.ps : (k+1)*v.ps])
			}
			for off, val := range v.shadow[p] {
				binary.LittleEndian.PutUint64(want[k*v.ps+off:], val)
			}
		}
		if bytes.Equal(got, want) {
			rep.WholePagesVerified++
			continue
		}
		rep.Mismatches++
		if rep.FirstError == "" {
			i := 0
			for got[i] == want[i] {
				i++
			}
			rep.FirstError = fmt.Sprintf("2 MiB page %d byte %d (file offset %d): got %#02x want %#02x", gp, i, gp*v.gps+uint64(i), got[i], want[i])
		}
	}
}

// restoreWarmHuge is the warm lower bound of a 2 MiB guest: hugetlb guest
// memory with every huge page the trace touches already copied in before
// the clock starts.
func (v *vm) restoreWarmHuge(layout []Region) error {
	for _, r := range layout {
		m, err := mapAnon(r.Size, v.gps)
		if err != nil {
			return err
		}
		v.regions = append(v.regions, &mapped{Region: r, m: m, addr: m.Addr()})
	}
	per := v.gps / v.ps
	done := map[uint64]bool{}
	for _, a := range v.cfg.Trace.Accesses {
		gp := a.Page / per
		if done[gp] {
			continue
		}
		done[gp] = true
		addr, _, ok := v.at(gp * v.gps)
		if !ok {
			continue
		}
		copy(offheap.At(addr, int(v.gps)), v.ref.B[gp*v.gps:(gp+1)*v.gps])
	}
	return nil
}
