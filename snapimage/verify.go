package snapimage

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
)

// VerifyResult summarises Verify.
type VerifyResult struct {
	Pages     uint64 `json:"pages"`
	ZeroPages uint64 `json:"zero_pages"`
	HotPages  uint64 `json:"hot_pages"`
	ColdPages uint64 `json:"cold_pages"`
	Bytes     uint64 `json:"bytes_compared"`
}

// MismatchError reports the first byte where the image's reconstruction
// differs from the memory file.
type MismatchError struct {
	Page   uint64
	Class  Class
	Index  uint64
	Offset uint64 // byte offset in the memory file
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("the image's reconstruction differs from the memory file at byte %d (%#x): guest page %d, %s page %d", e.Offset, e.Offset, e.Page, e.Class, e.Index)
}

// Verify checks the image at img (metadata, every digest) and then rebuilds
// every page of guest memory from it and compares it byte for byte with the
// memory file at mem, reporting the first difference.
func Verify(img, mem string, progress func(done, total int64)) (*VerifyResult, error) {
	im, f, err := Open(img)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mf, err := os.Open(mem)
	if err != nil {
		return nil, err
	}
	defer mf.Close()
	st, err := mf.Stat()
	if err != nil {
		return nil, err
	}
	if uint64(st.Size()) != im.hdr.memSize {
		return nil, fmt.Errorf("memory file %s has %d bytes, image %s describes %d", mem, st.Size(), img, im.hdr.memSize)
	}
	segBytes := int64(im.hdr.sections[SecHotSegment].Length + im.hdr.sections[SecColdSegment].Length)
	total := segBytes + int64(im.hdr.memSize)
	var pf func(int64)
	if progress != nil {
		pf = func(d int64) { progress(d, total) }
	}
	if err := im.CheckSegments(f, pf); err != nil {
		return nil, fmt.Errorf("%s: %w", img, err)
	}
	hot, cold := im.Segment(f, SecHotSegment), im.Segment(f, SecColdSegment)
	res := &VerifyResult{}
	err = im.Reconstruct(hot, cold, &compareWriter{r: bufio.NewReaderSize(mf, 1<<20), res: res}, func(d int64) {
		if progress != nil {
			progress(segBytes+d, total)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("%s against %s: %w", img, mem, err)
	}
	res.Pages = im.hdr.pages
	res.ZeroPages, res.HotPages, res.ColdPages = im.hdr.zeroPages, im.hdr.hotPages, im.hdr.coldPages
	return res, nil
}

// Reconstruct writes the whole guest memory (MemSize bytes) to w, reading
// stored pages from the hot and cold segment bytes and checking each
// page's digest.
func (im *Image) Reconstruct(hot, cold io.ReaderAt, w io.Writer, progress func(done int64)) error {
	ps := uint64(im.hdr.pageSize)
	page := make([]byte, ps)
	var done uint64
	for _, r := range im.runs {
		for k := uint64(0); k < uint64(r.Count); k++ {
			pg := r.Page + k
			var err error
			switch r.Class {
			case Zero:
				clear(page)
			case Hot:
				err = im.ReadHotPage(hot, r.Index+k, page)
			case Cold:
				err = im.ReadColdPage(cold, r.Index+k, page)
			}
			if err != nil {
				return err
			}
			n := min(ps, im.hdr.memSize-pg*ps)
			if _, err := w.Write(page[:n]); err != nil {
				if me, ok := err.(*MismatchError); ok {
					me.Page, me.Class = pg, r.Class
					if r.Class != Zero {
						me.Index = r.Index + k
					}
				}
				return err
			}
			done += n
			if progress != nil && pg%1024 == 1023 {
				progress(int64(done))
			}
		}
	}
	if progress != nil {
		progress(int64(done))
	}
	return nil
}

// compareWriter compares everything written to it with r, sequentially.
type compareWriter struct {
	r   io.Reader
	off uint64
	buf []byte
	res *VerifyResult
}

func (c *compareWriter) Write(p []byte) (int, error) {
	if cap(c.buf) < len(p) {
		c.buf = make([]byte, len(p))
	}
	b := c.buf[:len(p)]
	if _, err := io.ReadFull(c.r, b); err != nil {
		return 0, fmt.Errorf("read memory file at byte %d: %w", c.off, err)
	}
	if !bytes.Equal(b, p) {
		i := 0
		for b[i] == p[i] {
			i++
		}
		return i, &MismatchError{Offset: c.off + uint64(i)}
	}
	c.off += uint64(len(p))
	c.res.Bytes += uint64(len(p))
	return len(p), nil
}
