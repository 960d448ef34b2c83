package wset

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/aquifer-pool/aquifer/internal/atomicfile"
)

// On-disk working-set format, version 2 (docs/format.md, "Working-set
// file"). All integers are little-endian.
//
//	offset size field
//	0      8    magic "AQWSET\x00\x01"
//	8      4    version (2)
//	12     4    page size in bytes
//	16     8    memory size in bytes (0 = unknown)
//	24     8    record count
//	32     4    source length in bytes (<= MaxSourceLen)
//	36     4    record size in bytes (32)
//	40     4    flags: bit 0 = bound (the next field is set); no other bits
//	44     4    reserved, zero
//	48     8    xxhash64 of the memory file the trace was recorded from
//	            (Fingerprint.XXH64; zero when unbound)
//	56     4    CRC32C of bytes [0,56) followed by the source bytes
//	60     4    reserved, zero
//	64     n    source (UTF-8, not NUL-terminated)
//	...    32*count records:
//	             0  8 page index
//	             8  8 T, nanoseconds since the first access (int64, >= 0)
//	            16  8 guest instruction count (0 = unknown)
//	            24  1 kind bits (1 read, 2 write, 4 exec)
//	            25  1 vCPU
//	            26  6 reserved, zero
//	...    4    CRC32C of all record bytes
//	...    8    end magic "AQWSEND\x00"
//
// Version 1 has the same fields up to byte 40, then the header CRC at 40
// (over [0,40) and the source), 4 reserved bytes and the source at 48: no
// flags and no fingerprint. Decode reads it as an unbound trace.
const (
	// Version is the working-set format version that Encode writes.
	// Decode reads it and version 1.
	Version = 2
	// MaxSourceLen bounds the Source string on disk.
	MaxSourceLen = 64 << 10
	// MaxRecords bounds the record count Decode accepts (2^32 accesses is
	// 128 GiB of records, far beyond any real trace).
	MaxRecords = 1 << 32

	headerLenV1 = 48
	headerLen   = 64 // version 2
	recordLen   = 32
	trailerLen  = 12

	flagBound = 1 << 0
)

var (
	fileMagic  = [8]byte{'A', 'Q', 'W', 'S', 'E', 'T', 0, 1}
	endMagic   = [8]byte{'A', 'Q', 'W', 'S', 'E', 'N', 'D', 0}
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// FormatError reports a malformed working-set file: what is wrong and at
// which byte offset of the stream.
type FormatError struct {
	// Offset is the byte offset in the stream where the problem is.
	Offset int64
	// What names the structure (header, source, record N, trailer).
	What string
	// Err describes the problem.
	Err error
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("working-set file: %s at byte %d: %v", e.What, e.Offset, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// ErrChecksum is wrapped by FormatError when a CRC does not match.
var ErrChecksum = errors.New("checksum mismatch")

// Encode writes t to w in the working-set file format. The trace must pass
// Validate. Encode does not buffer beyond one record batch; wrap w in a
// bufio.Writer if it is unbuffered.
func Encode(w io.Writer, t *Trace) error {
	if t == nil {
		return errors.New("encode: nil trace")
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	if len(t.Source) > MaxSourceLen {
		return fmt.Errorf("encode: source of %d bytes exceeds %d", len(t.Source), MaxSourceLen)
	}
	var hdr [headerLen]byte
	copy(hdr[0:8], fileMagic[:])
	binary.LittleEndian.PutUint32(hdr[8:], Version)
	binary.LittleEndian.PutUint32(hdr[12:], t.PageSize)
	binary.LittleEndian.PutUint64(hdr[16:], t.MemSize)
	binary.LittleEndian.PutUint64(hdr[24:], uint64(len(t.Accesses)))
	binary.LittleEndian.PutUint32(hdr[32:], uint32(len(t.Source)))
	binary.LittleEndian.PutUint32(hdr[36:], recordLen)
	if t.Memory != nil {
		binary.LittleEndian.PutUint32(hdr[40:], flagBound)
		binary.LittleEndian.PutUint64(hdr[48:], t.Memory.XXH64)
	}
	hc := crc32.Update(0, castagnoli, hdr[:56])
	hc = crc32.Update(hc, castagnoli, []byte(t.Source))
	binary.LittleEndian.PutUint32(hdr[56:], hc)
	if _, err := w.Write(hdr[:]); err != nil {
		return fmt.Errorf("encode header: %w", err)
	}
	if _, err := io.WriteString(w, t.Source); err != nil {
		return fmt.Errorf("encode source: %w", err)
	}
	const batch = 1024
	buf := make([]byte, 0, batch*recordLen)
	var rc uint32
	flush := func() error {
		rc = crc32.Update(rc, castagnoli, buf)
		_, err := w.Write(buf)
		buf = buf[:0]
		return err
	}
	for _, a := range t.Accesses {
		var r [recordLen]byte
		putRecord(r[:], a)
		buf = append(buf, r[:]...)
		if len(buf) == cap(buf) {
			if err := flush(); err != nil {
				return fmt.Errorf("encode records: %w", err)
			}
		}
	}
	if err := flush(); err != nil {
		return fmt.Errorf("encode records: %w", err)
	}
	var tr [trailerLen]byte
	binary.LittleEndian.PutUint32(tr[0:], rc)
	copy(tr[4:], endMagic[:])
	if _, err := w.Write(tr[:]); err != nil {
		return fmt.Errorf("encode trailer: %w", err)
	}
	return nil
}

func putRecord(r []byte, a Access) {
	binary.LittleEndian.PutUint64(r[0:], a.Page)
	binary.LittleEndian.PutUint64(r[8:], uint64(a.T))
	binary.LittleEndian.PutUint64(r[16:], a.Insn)
	r[24] = byte(a.Kind)
	r[25] = a.CPU
}

// Decode reads one working-set file from r. Every structure is checked
// (magic, version, sizes, CRCs, reserved bytes, trailer, Validate) and any
// problem is reported as a *FormatError naming the structure and its byte
// offset. Decode never panics and never allocates more than the input can
// justify: records are read in bounded batches.
func Decode(r io.Reader) (*Trace, error) {
	var hdr [headerLen]byte
	if n, err := io.ReadFull(r, hdr[:headerLenV1]); err != nil {
		return nil, &FormatError{int64(n), "header", fmt.Errorf("truncated: got %d of %d bytes: %w", n, headerLenV1, err)}
	}
	if !bytes.Equal(hdr[0:8], fileMagic[:]) {
		return nil, &FormatError{0, "header magic", fmt.Errorf("got %q, want %q (not a working-set file)", hdr[0:8], fileMagic[:])}
	}
	v := binary.LittleEndian.Uint32(hdr[8:])
	hlen, crcOff := headerLen, 56
	switch {
	case v == 1:
		hlen, crcOff = headerLenV1, 40
	case v > Version:
		return nil, &FormatError{8, "header version", fmt.Errorf("working-set format version %d is newer than this build reads (versions 1 to %d): it was written by a newer Aquifer; upgrade", v, Version)}
	case v != Version:
		return nil, &FormatError{8, "header version", fmt.Errorf("version %d not supported (this build reads 1 to %d)", v, Version)}
	}
	if hlen > headerLenV1 {
		if n, err := io.ReadFull(r, hdr[headerLenV1:hlen]); err != nil {
			return nil, &FormatError{headerLenV1 + int64(n), "header", fmt.Errorf("truncated: got %d of %d bytes: %w", headerLenV1+n, hlen, err)}
		}
	}
	srcLen := binary.LittleEndian.Uint32(hdr[32:])
	if srcLen > MaxSourceLen {
		return nil, &FormatError{32, "header source length", fmt.Errorf("%d exceeds %d", srcLen, MaxSourceLen)}
	}
	if rl := binary.LittleEndian.Uint32(hdr[36:]); rl != recordLen {
		return nil, &FormatError{36, "header record size", fmt.Errorf("%d, want %d", rl, recordLen)}
	}
	if res := binary.LittleEndian.Uint32(hdr[crcOff+4:]); res != 0 {
		return nil, &FormatError{int64(crcOff) + 4, "header reserved", fmt.Errorf("%#x, want 0", res)}
	}
	var memory *Fingerprint
	if v >= 2 {
		flags := binary.LittleEndian.Uint32(hdr[40:])
		if flags&^flagBound != 0 {
			return nil, &FormatError{40, "header flags", fmt.Errorf("%#x has unknown bits (this build knows %#x)", flags, flagBound)}
		}
		if res := binary.LittleEndian.Uint32(hdr[44:]); res != 0 {
			return nil, &FormatError{44, "header reserved", fmt.Errorf("%#x, want 0", res)}
		}
		xh := binary.LittleEndian.Uint64(hdr[48:])
		if flags&flagBound != 0 {
			memory = &Fingerprint{Size: binary.LittleEndian.Uint64(hdr[16:]), XXH64: xh}
		} else if xh != 0 {
			return nil, &FormatError{48, "header memory fingerprint", fmt.Errorf("%#016x in an unbound working set, want 0", xh)}
		}
	}
	src := make([]byte, srcLen)
	if n, err := io.ReadFull(r, src); err != nil {
		return nil, &FormatError{int64(hlen) + int64(n), "source", fmt.Errorf("truncated: got %d of %d bytes: %w", n, srcLen, err)}
	}
	hc := crc32.Update(0, castagnoli, hdr[:crcOff])
	hc = crc32.Update(hc, castagnoli, src)
	if want := binary.LittleEndian.Uint32(hdr[crcOff:]); hc != want {
		return nil, &FormatError{int64(crcOff), "header", fmt.Errorf("%w: computed %#08x, stored %#08x", ErrChecksum, hc, want)}
	}
	count := binary.LittleEndian.Uint64(hdr[24:])
	if count > MaxRecords {
		return nil, &FormatError{24, "header record count", fmt.Errorf("%d exceeds %d", count, uint64(MaxRecords))}
	}
	t := &Trace{
		PageSize: binary.LittleEndian.Uint32(hdr[12:]),
		MemSize:  binary.LittleEndian.Uint64(hdr[16:]),
		Memory:   memory,
		Source:   string(src),
	}
	// Grow with the data actually read, never trusting count for allocation.
	t.Accesses = make([]Access, 0, min(count, 1<<16))
	base := int64(hlen) + int64(srcLen)
	const batch = 4096
	buf := make([]byte, batch*recordLen)
	var rc uint32
	for done := uint64(0); done < count; {
		nrec := min(count-done, batch)
		b := buf[:nrec*recordLen]
		off := base + int64(done)*recordLen
		if n, err := io.ReadFull(r, b); err != nil {
			return nil, &FormatError{off + int64(n), fmt.Sprintf("record %d", done+uint64(n)/recordLen),
				fmt.Errorf("truncated: header announces %d records, stream ends after %d: %w", count, done+uint64(n)/recordLen, err)}
		}
		rc = crc32.Update(rc, castagnoli, b)
		for i := uint64(0); i < nrec; i++ {
			rec := b[i*recordLen : (i+1)*recordLen]
			for j := 26; j < recordLen; j++ {
				if rec[j] != 0 {
					return nil, &FormatError{off + int64(i)*recordLen + int64(j), fmt.Sprintf("record %d", done+i), fmt.Errorf("reserved byte %d is %#x, want 0", j, rec[j])}
				}
			}
			ts := int64(binary.LittleEndian.Uint64(rec[8:]))
			if ts < 0 {
				return nil, &FormatError{off + int64(i)*recordLen + 8, fmt.Sprintf("record %d", done+i), fmt.Errorf("negative time %d ns", ts)}
			}
			t.Accesses = append(t.Accesses, Access{
				Page: binary.LittleEndian.Uint64(rec[0:]),
				T:    time.Duration(ts),
				Insn: binary.LittleEndian.Uint64(rec[16:]),
				Kind: Kind(rec[24]),
				CPU:  rec[25],
			})
		}
		done += nrec
	}
	toff := base + int64(count)*recordLen
	var tr [trailerLen]byte
	if n, err := io.ReadFull(r, tr[:]); err != nil {
		return nil, &FormatError{toff + int64(n), "trailer", fmt.Errorf("truncated: got %d of %d bytes: %w", n, trailerLen, err)}
	}
	if want := binary.LittleEndian.Uint32(tr[0:]); rc != want {
		return nil, &FormatError{toff, "records", fmt.Errorf("%w over %d records: computed %#08x, stored %#08x", ErrChecksum, count, rc, want)}
	}
	if !bytes.Equal(tr[4:], endMagic[:]) {
		return nil, &FormatError{toff + 4, "trailer magic", fmt.Errorf("got %q, want %q", tr[4:], endMagic[:])}
	}
	if err := t.Validate(); err != nil {
		return nil, &FormatError{base, "records", err}
	}
	return t, nil
}

// WriteFile writes t to path atomically: it encodes into a temporary file
// in the same directory, fsyncs it, renames it over path and fsyncs the
// directory, so a reader sees either the old file or the complete new one.
func WriteFile(path string, t *Trace) error {
	err := atomicfile.Write(path, 0o644, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<20)
		if err := Encode(bw, t); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return err
	}
	return nil
}

// ReadFile decodes the working-set file at path. Trailing bytes after the
// end magic are an error (a file holds exactly one trace).
func ReadFile(path string) (*Trace, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	t, err := Decode(br)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := br.ReadByte(); err == nil {
		return nil, fmt.Errorf("%s: wset: trailing data after the end magic", path)
	} else if err != io.EOF {
		return nil, fmt.Errorf("%s: wset: %w", path, err)
	}
	return t, nil
}

// Merge returns the union of the first touches of several recordings of
// the same memory image. Each input is reduced to its first touches
// (FirstTouches); a page touched by several inputs keeps its earliest time
// and the union of all kinds. The output is ordered by time, ties broken by
// input position and then by order within the input, so the result is
// deterministic for a given argument order. Insn and CPU come from the
// access that defines the page's earliest time.
//
// All inputs must have the same page size; a memory size of 0 (unknown)
// agrees with any other, two different non-zero sizes are an error. Inputs
// bound to different memories (Trace.Memory) are an error (*MergeError): they
// are recordings of different snapshots. The merge is bound when every input
// is bound to the same memory; when some input is unbound it is unbound
// (Unbound lists those inputs), since nothing says that input was recorded
// from the others' memory.
func Merge(traces ...*Trace) (*Trace, error) {
	if len(traces) == 0 {
		return nil, errors.New("merge: no traces")
	}
	var (
		memory  *Fingerprint
		memFrom int
		unbound bool
	)
	for i, t := range traces {
		if t == nil || t.Memory == nil {
			unbound = true
			continue
		}
		if memory != nil && *memory != *t.Memory {
			return nil, &MergeError{First: memFrom, Other: i, FirstSource: traces[memFrom].Source, OtherSource: t.Source,
				FirstMemory: *memory, OtherMemory: *t.Memory}
		}
		if memory == nil {
			memory, memFrom = t.Memory, i
		}
	}
	out := &Trace{}
	if !unbound && memory != nil {
		out.Memory = &Fingerprint{Size: memory.Size, XXH64: memory.XXH64}
	}
	var srcs []string
	type cand struct {
		a       Access
		in, pos int
	}
	best := make(map[uint64]int)
	var cands []cand
	for i, t := range traces {
		if t == nil {
			return nil, fmt.Errorf("merge: trace %d is nil", i)
		}
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("merge: trace %d (%q): %w", i, t.Source, err)
		}
		if i == 0 {
			out.PageSize = t.PageSize
		} else if t.PageSize != out.PageSize {
			return nil, fmt.Errorf("merge: trace %d (%q) has page size %d, trace 0 has %d", i, t.Source, t.PageSize, out.PageSize)
		}
		if t.MemSize != 0 {
			if out.MemSize != 0 && out.MemSize != t.MemSize {
				return nil, fmt.Errorf("merge: trace %d (%q) has memory size %d, earlier traces %d", i, t.Source, t.MemSize, out.MemSize)
			}
			out.MemSize = t.MemSize
		}
		if t.Source != "" {
			srcs = append(srcs, t.Source)
		}
		for pos, a := range t.FirstTouches() {
			c := cand{a, i, pos}
			j, ok := best[a.Page]
			if !ok {
				best[a.Page] = len(cands)
				cands = append(cands, c)
				continue
			}
			kinds := cands[j].a.Kind | a.Kind
			if a.T < cands[j].a.T {
				cands[j] = c
			}
			cands[j].a.Kind = kinds
		}
	}
	sort.SliceStable(cands, func(x, y int) bool {
		a, b := cands[x], cands[y]
		if a.a.T != b.a.T {
			return a.a.T < b.a.T
		}
		if a.in != b.in {
			return a.in < b.in
		}
		return a.pos < b.pos
	})
	out.Accesses = make([]Access, len(cands))
	for i, c := range cands {
		out.Accesses[i] = c.a
	}
	if out.Memory != nil && out.MemSize == 0 {
		out.MemSize = out.Memory.Size
	}
	out.Source = "merge(" + strings.Join(srcs, ", ") + ")"
	if len(out.Source) > MaxSourceLen {
		out.Source = out.Source[:MaxSourceLen-len("...)")] + "...)"
	}
	return out, nil
}

// MergeError is returned by Merge for inputs recorded from different
// memories.
type MergeError struct {
	// First and Other are the positions of the two inputs.
	First, Other int
	// FirstSource and OtherSource are their Source strings.
	FirstSource, OtherSource string
	// FirstMemory and OtherMemory are their memories' fingerprints.
	FirstMemory, OtherMemory Fingerprint
}

func (e *MergeError) Error() string {
	return fmt.Sprintf("merging working sets: input %d (%q) was recorded from another memory (%s) than input %d (%q, %s): "+
		"a merge is of recordings of one snapshot", e.Other, e.OtherSource, e.OtherMemory, e.First, e.FirstSource, e.FirstMemory)
}
