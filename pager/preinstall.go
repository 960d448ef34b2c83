package pager

import (
	"fmt"
	"sync/atomic"

	"github.com/aquifer-pool/aquifer/restore"
	"github.com/aquifer-pool/aquifer/snapimage"
)

// preinstallChunk is how many hot pages one pre-install task verifies and
// then installs: small enough that the tasks spread over the threads for a
// hot set of a few hundred pages, large enough that taking one costs
// nothing against its copies.
var preinstallChunk = 64 // a variable for the tests

// preinstallRuns verifies and installs the hot set of a whole-page image
// (4 KiB pages, or 2 MiB pages stored whole) from seg, in first-touch
// order, on preinstallWorkers() threads: the hot runs are cut into tasks
// of about preinstallChunk pages; a task checks every page of its runs
// against the image's digests, then installs each run with one
// UFFDIO_COPY (two where it crosses from one piece of the segment to the
// next). No page is installed before it is verified; verification runs
// beside other tasks' copies instead of before them all. A digest mismatch
// fails with hotMismatch (withHot then falls back). It returns the pages
// installed.
func (s *Session) preinstallRuns(seg restore.Segment, src string) (uint64, error) {
	runs := s.img.HotRuns()
	var tasks []int // index of each task's first run; len(runs) closes the last
	for i, acc := 0, 0; i < len(runs); i++ {
		if acc == 0 {
			tasks = append(tasks, i)
		}
		if acc += int(runs[i].Count); acc >= preinstallChunk {
			acc = 0
		}
	}
	tasks = append(tasks, len(runs))
	var installed atomic.Uint64
	err := parallel(uint64(len(tasks)-1), func(_ int, t uint64) error {
		mine := runs[tasks[t]:tasks[t+1]]
		for _, run := range mine {
			if err := s.verifyHotRun(seg, run, src); err != nil {
				return err
			}
		}
		for _, run := range mine {
			n, err := s.installHotRun(seg, run)
			installed.Add(n)
			if err != nil {
				return err
			}
		}
		return nil
	})
	return installed.Load(), err
}

func (s *Session) verifyHotRun(seg restore.Segment, run snapimage.Run, src string) error {
	for i := run.Index; i < run.Index+uint64(run.Count); i++ {
		if err := s.img.VerifyHotPage(i, seg.Page(i, s.ps)); err != nil {
			return hotMismatch{fmt.Errorf("pager: hot segment from %s: %w", src, err)}
		}
	}
	return nil
}

// installHotRun installs one verified hot run: one UFFDIO_COPY unless it
// crosses from one piece of the segment to the next.
func (s *Session) installHotRun(seg restore.Segment, run snapimage.Run) (uint64, error) {
	var installed uint64
	for page, idx, left := run.Page, run.Index, uint64(run.Count); left > 0; {
		addr, k := seg.Run(idx, left, s.ps)
		if k == 0 {
			return installed, fmt.Errorf("pager: hot run at page %d lies beyond the %d-byte hot segment", run.Page, seg.Len())
		}
		if !s.bgEnter() {
			return installed, errQuiesced
		}
		n, err := s.h.InstallQuiet(page*s.ps, addr, k)
		s.bgExit()
		installed += n
		if err != nil {
			return installed, fmt.Errorf("pager: pre-installing hot run at page %d: %w", run.Page, err)
		}
		page, idx, left = page+k, idx+k, left-k
	}
	return installed, nil
}
