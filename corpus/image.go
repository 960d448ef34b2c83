package corpus

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

const pageSize = 4096

var zeroPage [pageSize]byte

// copySparse copies a memory image page by page, leaving all-zero pages as
// holes. The result reads back byte-identical to src (holes read as zero),
// so it is still a valid Firecracker memory file, but zero pages take no
// disk space. The copy is written to a temp file and renamed.
func copySparse(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	return writeAtomic(dst, func(w io.Writer) error {
		f := w.(*os.File)
		buf := make([]byte, 1<<20)
		var off int64
		for {
			n, err := io.ReadFull(in, buf)
			if n > 0 {
				for p := 0; p < n; p += pageSize {
					end := min(p+pageSize, n)
					if bytes.Equal(buf[p:end], zeroPage[:end-p]) {
						continue
					}
					if _, err := f.WriteAt(buf[p:end], off+int64(p)); err != nil {
						return err
					}
				}
				off += int64(n)
			}
			if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
				break
			}
			if err != nil {
				return err
			}
		}
		return f.Truncate(st.Size())
	})
}

// changedPages compares two images of equal size page by page and returns
// the indices of pages whose content differs.
func changedPages(a, b string) ([]uint64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return nil, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return nil, err
	}
	defer fb.Close()
	sa, _ := fa.Stat()
	sb, _ := fb.Stat()
	if sa.Size() != sb.Size() {
		return nil, fmt.Errorf("images differ in size: %d vs %d", sa.Size(), sb.Size())
	}
	ba := make([]byte, 1<<20)
	bb := make([]byte, 1<<20)
	var out []uint64
	var page uint64
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb {
			return nil, errors.New("short read comparing images")
		}
		for p := 0; p < na; p += pageSize {
			end := min(p+pageSize, na)
			if !bytes.Equal(ba[p:end], bb[p:end]) {
				out = append(out, page)
			}
			page++
		}
		if ea == io.EOF || errors.Is(ea, io.ErrUnexpectedEOF) {
			break
		}
		if ea != nil {
			return nil, ea
		}
		if eb != nil && eb != io.EOF && !errors.Is(eb, io.ErrUnexpectedEOF) {
			return nil, eb
		}
	}
	return out, nil
}

// ZeroPages returns, for an image, a bitmap of all-zero pages (true = zero)
// and the number of them.
func ZeroPages(path string) ([]bool, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var zero []bool
	n := 0
	for {
		m, err := io.ReadFull(f, buf)
		for p := 0; p < m; p += pageSize {
			end := min(p+pageSize, m)
			z := bytes.Equal(buf[p:end], zeroPage[:end-p])
			zero = append(zero, z)
			if z {
				n++
			}
		}
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return nil, 0, err
		}
	}
	return zero, n, nil
}

// insnToDuration converts a guest instruction count to calibrated native time.
func insnToDuration(insn uint64, nsPerInsn float64) time.Duration {
	return time.Duration(float64(insn) * nsPerInsn)
}
