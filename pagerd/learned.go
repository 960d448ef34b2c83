package pagerd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/aquifer-pool/aquifer/internal/atomicfile"
	"github.com/aquifer-pool/aquifer/pager"
	"github.com/aquifer-pool/aquifer/snapimage"
)

// The daemon keeps what it learned about each image's cold pages
// (pager.History) in its state directory, learned/IMAGE-ID, so that a
// restarted or upgraded daemon (which takes the directory over) does not
// learn it again: a hint, never trusted for bytes (every learned page is
// read from the tier and verified against the image's digests, and pages
// outside the image are skipped).

const learnedDir = "learned"

// maxLearnedFile bounds a history file read back (8 MiB of 4 KiB pages is
// 2048 numbers: a few tens of KiB).
const maxLearnedFile = 4 << 20

// learnedFile is a history on disk.
type learnedFile struct {
	Image string   `json:"image"`
	Pages []uint64 `json:"pages"`
}

func (d *Daemon) learnedPath(image string) string {
	return filepath.Join(d.cfg.StateDir, learnedDir, image)
}

// historyOf returns the history of img (nil when learning is off), filled
// from the state directory the first time this daemon uses it.
func (d *Daemon) historyOf(img *snapimage.Image) *pager.History {
	h, created := d.histories.For(img.ID(), uint64(img.PageSize()))
	if h != nil && created {
		if pages, err := readLearned(d.learnedPath(img.ID()), img.ID()); err != nil {
			d.log.Warn("ignoring the learned cold pages kept for an image", "image", img.ID(), "err", err)
		} else {
			h.Learn(pages)
		}
	}
	return h
}

// saveHistory keeps h, image's history, in the state directory.
func (d *Daemon) saveHistory(image string, h *pager.History) {
	b, err := json.Marshal(learnedFile{Image: image, Pages: h.Pages()})
	if err == nil {
		if err = os.MkdirAll(filepath.Join(d.cfg.StateDir, learnedDir), 0o700); err == nil {
			err = atomicfile.Replace(d.learnedPath(image), append(b, '\n'), 0o600)
		}
	}
	if err != nil {
		d.log.Warn("keeping the learned cold pages of an image (a restarted daemon learns them again)", "image", image, "err", err)
	}
}

// readLearned reads a history file of image: none is an empty history.
func readLearned(path, image string) ([]uint64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxLearnedFile+1))
	if err != nil {
		return nil, err
	}
	return parseLearned(b, image)
}

// parseLearned decodes a history file of image.
func parseLearned(b []byte, image string) ([]uint64, error) {
	if len(b) > maxLearnedFile {
		return nil, fmt.Errorf("history file over %d bytes", maxLearnedFile)
	}
	var lf learnedFile
	if err := json.Unmarshal(b, &lf); err != nil {
		return nil, fmt.Errorf("corrupt history file: %w", err)
	}
	if lf.Image != image {
		return nil, fmt.Errorf("history file of image %q, not %q", lf.Image, image)
	}
	return lf.Pages, nil
}
