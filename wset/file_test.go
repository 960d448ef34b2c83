package wset

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sampleTrace(n int) *Trace {
	t := &Trace{PageSize: 4096, MemSize: 128 << 20, Source: "fn=hello input=1 tool=test"}
	for i := 0; i < n; i++ {
		t.Accesses = append(t.Accesses, Access{
			Page: uint64(i*7919) % (128 << 20 / 4096),
			T:    time.Duration(i) * time.Microsecond,
			Insn: uint64(i) * 1000,
			Kind: Kind(1 << (i % 3)),
			CPU:  uint8(i % 2),
		})
	}
	return t
}

// boundTrace is sampleTrace(n) bound to a memory of its size.
func boundTrace(n int) *Trace {
	t := sampleTrace(n)
	t.Memory = &Fingerprint{Size: t.MemSize, XXH64: 0x0123456789abcdef}
	return t
}

// encodeV1 writes t in format version 1 (no fingerprint), as builds before
// version 2 did: the files they left behind must still read.
func encodeV1(t *Trace) []byte {
	var b bytes.Buffer
	var hdr [headerLenV1]byte
	copy(hdr[0:8], fileMagic[:])
	binary.LittleEndian.PutUint32(hdr[8:], 1)
	binary.LittleEndian.PutUint32(hdr[12:], t.PageSize)
	binary.LittleEndian.PutUint64(hdr[16:], t.MemSize)
	binary.LittleEndian.PutUint64(hdr[24:], uint64(len(t.Accesses)))
	binary.LittleEndian.PutUint32(hdr[32:], uint32(len(t.Source)))
	binary.LittleEndian.PutUint32(hdr[36:], recordLen)
	hc := crc32.Update(0, castagnoli, hdr[:40])
	hc = crc32.Update(hc, castagnoli, []byte(t.Source))
	binary.LittleEndian.PutUint32(hdr[40:], hc)
	b.Write(hdr[:])
	b.WriteString(t.Source)
	var recs []byte
	for _, a := range t.Accesses {
		var r [recordLen]byte
		putRecord(r[:], a)
		recs = append(recs, r[:]...)
	}
	b.Write(recs)
	var tr [trailerLen]byte
	binary.LittleEndian.PutUint32(tr[0:], crc32.Update(0, castagnoli, recs))
	copy(tr[4:], endMagic[:])
	b.Write(tr[:])
	return b.Bytes()
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 1023, 1024, 1025, 10000} {
		for _, tr := range []*Trace{sampleTrace(n), boundTrace(n)} {
			testRoundTrip(t, n, tr)
		}
	}
}

func testRoundTrip(t *testing.T, n int, tr *Trace) {
	t.Helper()
	var buf bytes.Buffer
	if err := Encode(&buf, tr); err != nil {
		t.Fatal(err)
	}
	if got, want := buf.Len(), headerLen+len(tr.Source)+recordLen*n+trailerLen; got != want {
		t.Fatalf("n=%d: encoded %d bytes, want %d", n, got, want)
	}
	got, err := Decode(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatalf("n=%d: %v", n, err)
	}
	if n == 0 {
		tr.Accesses = []Access{}
	}
	if !reflect.DeepEqual(got, tr) {
		t.Fatalf("n=%d: round trip differs (bound %v)", n, tr.Memory != nil)
	}
}

// A version 1 file (committed, written by a build before version 2) reads
// as an unbound trace; so does every version 1 encoding.
func TestDecodeVersion1(t *testing.T) {
	got, err := ReadFile("testdata/v1.ws")
	if err != nil {
		t.Fatal(err)
	}
	if want := sampleTrace(5); !reflect.DeepEqual(got, want) {
		t.Fatalf("testdata/v1.ws:\n got %+v\nwant %+v", got, want)
	}
	if got.Memory != nil {
		t.Fatal("a version 1 file decoded as bound")
	}
	for _, n := range []int{0, 3, 5000} {
		tr := sampleTrace(n)
		got, err := Decode(bytes.NewReader(encodeV1(tr)))
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if n == 0 {
			tr.Accesses = []Access{}
		}
		if !reflect.DeepEqual(got, tr) {
			t.Fatalf("n=%d: version 1 decodes differently", n)
		}
	}
}

func TestDecodeVersions(t *testing.T) {
	var buf bytes.Buffer
	if err := Encode(&buf, boundTrace(2)); err != nil {
		t.Fatal(err)
	}
	for v, want := range map[uint32]string{0: "version 0 not supported", 3: "version 3 is newer than this build reads (versions 1 to 2)"} {
		b := bytes.Clone(buf.Bytes())
		binary.LittleEndian.PutUint32(b[8:], v)
		_, err := Decode(bytes.NewReader(b))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("version %d: %v, want %q", v, err, want)
		}
	}
	// A bound trace must name its memory size; the fingerprint of an
	// unbound one must be zero; unknown flags are refused.
	for name, edit := range map[string]func(b []byte){
		"bound, no memory size": func(b []byte) { binary.LittleEndian.PutUint64(b[16:], 0) },
		"unbound with a hash":   func(b []byte) { binary.LittleEndian.PutUint32(b[40:], 0) },
		"unknown flag":          func(b []byte) { binary.LittleEndian.PutUint32(b[40:], 3) },
		"reserved 44":           func(b []byte) { b[44] = 1 },
		"reserved 60":           func(b []byte) { b[60] = 1 },
	} {
		b := bytes.Clone(buf.Bytes())
		edit(b)
		srcLen := binary.LittleEndian.Uint32(b[32:])
		hc := crc32.Update(0, castagnoli, b[:56])
		hc = crc32.Update(hc, castagnoli, b[headerLen:headerLen+int(srcLen)])
		binary.LittleEndian.PutUint32(b[56:], hc) // the damage is not a checksum error
		_, err := Decode(bytes.NewReader(b))
		var fe *FormatError
		if !errors.As(err, &fe) || errors.Is(err, ErrChecksum) {
			t.Errorf("%s: %v, want a FormatError that is not a checksum mismatch", name, err)
		}
	}
}

func TestEncodeRejectsInvalid(t *testing.T) {
	tr := sampleTrace(3)
	tr.Accesses[2].T = 0
	if err := Encode(&bytes.Buffer{}, tr); err == nil {
		t.Fatal("encode accepted decreasing times")
	}
	tr = sampleTrace(1)
	tr.Source = strings.Repeat("x", MaxSourceLen+1)
	if err := Encode(&bytes.Buffer{}, tr); err == nil {
		t.Fatal("encode accepted an oversized source")
	}
}

// Every truncation and every single-bit flip of a valid file must be
// rejected with a *FormatError (never a panic, never a silently different
// trace).
func TestDecodeCorruption(t *testing.T) {
	var v2, v2u bytes.Buffer
	if err := Encode(&v2, boundTrace(40)); err != nil {
		t.Fatal(err)
	}
	if err := Encode(&v2u, sampleTrace(40)); err != nil {
		t.Fatal(err)
	}
	testCorruption(t, v2.Bytes(), headerLen)
	testCorruption(t, v2u.Bytes(), headerLen)
	testCorruption(t, encodeV1(sampleTrace(40)), headerLenV1)
}

func testCorruption(t *testing.T, good []byte, hlen int) {
	tr := sampleTrace(40)
	for n := 0; n < len(good); n++ {
		_, err := Decode(bytes.NewReader(good[:n]))
		var fe *FormatError
		if !errors.As(err, &fe) {
			t.Fatalf("truncated to %d bytes: got %v, want FormatError", n, err)
		}
	}
	bad := make([]byte, len(good))
	for i := 0; i < len(good); i++ {
		for bit := 0; bit < 8; bit++ {
			copy(bad, good)
			bad[i] ^= 1 << bit
			_, err := Decode(bytes.NewReader(bad))
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("bit %d of byte %d flipped: got %v, want FormatError", bit, i, err)
			}
		}
	}
	// Spot-check that errors name the structure.
	copy(bad, good)
	bad[hlen+len(tr.Source)+5*recordLen] ^= 1
	_, err := Decode(bytes.NewReader(bad))
	if err == nil || !strings.Contains(err.Error(), "records") || !errors.Is(err, ErrChecksum) {
		t.Fatalf("flipped record: %v", err)
	}
	copy(bad, good)
	bad[13] ^= 1
	_, err = Decode(bytes.NewReader(bad))
	if err == nil || !strings.Contains(err.Error(), "header") {
		t.Fatalf("flipped header: %v", err)
	}
}

func TestWriteReadFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ws.aqws")
	tr := sampleTrace(100)
	if err := WriteFile(p, tr); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, tr) {
		t.Fatal("file round trip differs")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left behind: %v", ents)
	}
	// A failed write leaves the old file intact and no temporary file.
	bad := sampleTrace(2)
	bad.PageSize = 1000
	if err := WriteFile(p, bad); err == nil {
		t.Fatal("WriteFile accepted invalid trace")
	}
	if got, err := ReadFile(p); err != nil || !reflect.DeepEqual(got, tr) {
		t.Fatalf("old file damaged by failed write: %v", err)
	}
	ents, _ = os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left behind after failure: %v", ents)
	}
	// Trailing garbage is rejected.
	b, _ := os.ReadFile(p)
	os.WriteFile(p, append(b, 0), 0o644)
	if _, err := ReadFile(p); err == nil || !strings.Contains(err.Error(), "trailing") {
		t.Fatalf("trailing byte: %v", err)
	}
}

func TestMerge(t *testing.T) {
	a := &Trace{PageSize: 4096, MemSize: 1 << 20, Source: "a", Accesses: []Access{
		{Page: 1, T: 0, Kind: Read},
		{Page: 2, T: 10, Kind: Read},
		{Page: 1, T: 20, Kind: Write}, // folded into page 1
		{Page: 5, T: 30, Kind: Exec},
	}}
	b := &Trace{PageSize: 4096, MemSize: 0, Source: "b", Accesses: []Access{
		{Page: 3, T: 0, Kind: Write, CPU: 1},
		{Page: 5, T: 5, Kind: Read, CPU: 1}, // earlier than a's page 5
		{Page: 2, T: 15, Kind: Write},       // later than a's page 2: kind folds
		{Page: 7, T: 40, Kind: Read},
	}}
	m, err := Merge(a, b)
	if err != nil {
		t.Fatal(err)
	}
	want := []Access{
		{Page: 1, T: 0, Kind: Read | Write},
		{Page: 3, T: 0, Kind: Write, CPU: 1},
		{Page: 5, T: 5, Kind: Read | Exec, CPU: 1},
		{Page: 2, T: 10, Kind: Read | Write},
		{Page: 7, T: 40, Kind: Read},
	}
	if !reflect.DeepEqual(m.Accesses, want) {
		t.Fatalf("merge:\n got %+v\nwant %+v", m.Accesses, want)
	}
	if m.MemSize != 1<<20 || m.PageSize != 4096 || m.Source != "merge(a, b)" {
		t.Fatalf("merge header: %+v", m)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	// Stable: same inputs, same output; merging a merge with its inputs is
	// idempotent.
	m2, _ := Merge(a, b)
	if !reflect.DeepEqual(m, m2) {
		t.Fatal("merge not deterministic")
	}
	m3, err := Merge(m, a, b)
	if err != nil || !reflect.DeepEqual(m3.Accesses, m.Accesses) {
		t.Fatalf("merge not idempotent: %v", err)
	}
	c := &Trace{PageSize: 4096, MemSize: 2 << 20}
	if _, err := Merge(a, c); err == nil {
		t.Fatal("merge accepted different memory sizes")
	}
	d := &Trace{PageSize: 2 << 20}
	if _, err := Merge(a, d); err == nil {
		t.Fatal("merge accepted different page sizes")
	}
	if _, err := Merge(); err == nil {
		t.Fatal("merge of nothing succeeded")
	}
}

func TestMergeMemories(t *testing.T) {
	fa := Fingerprint{Size: 1 << 20, XXH64: 0xaaaa}
	fb := Fingerprint{Size: 1 << 20, XXH64: 0xbbbb}
	mk := func(src string, fp *Fingerprint, pages ...uint64) *Trace {
		tr := &Trace{PageSize: 4096, MemSize: 1 << 20, Source: src}
		if fp != nil {
			tr.Memory = &Fingerprint{Size: fp.Size, XXH64: fp.XXH64}
		}
		for i, p := range pages {
			tr.Accesses = append(tr.Accesses, Access{Page: p, T: time.Duration(i), Kind: Read})
		}
		return tr
	}
	m, err := Merge(mk("a", &fa, 1, 2), mk("a2", &fa, 3))
	if err != nil {
		t.Fatal(err)
	}
	if m.Memory == nil || *m.Memory != fa || m.BindingTo(fa) != Bound {
		t.Fatalf("merge of recordings of one memory: bound to %v, want %v", m.Memory, fa)
	}
	_, err = Merge(mk("a", &fa, 1), mk("unbound", nil, 2), mk("b", &fb, 3))
	var me *MergeError
	if !errors.As(err, &me) || me.First != 0 || me.Other != 2 {
		t.Fatalf("merge of two memories: %v, want a MergeError naming inputs 0 and 2", err)
	}
	for _, want := range []string{`input 2 ("b")`, "xxh64 000000000000bbbb", `input 0 ("a"`, "xxh64 000000000000aaaa"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("merge error %q does not name %q", err, want)
		}
	}
	m, err = Merge(mk("a", &fa, 1), mk("unbound", nil, 2))
	if err != nil {
		t.Fatal(err)
	}
	if m.Memory != nil {
		t.Fatal("a merge with an unbound input is bound")
	}
}

func FuzzDecode(f *testing.F) {
	for _, n := range []int{0, 1, 3} {
		for _, tr := range []*Trace{sampleTrace(n), boundTrace(n)} {
			var buf bytes.Buffer
			if err := Encode(&buf, tr); err != nil {
				f.Fatal(err)
			}
			f.Add(buf.Bytes())
		}
		f.Add(encodeV1(sampleTrace(n)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		// Anything that decodes must re-encode (in the current version)
		// to a file that decodes to the same trace; a current-version
		// input re-encodes to the same bytes.
		var buf bytes.Buffer
		if err := Encode(&buf, tr); err != nil {
			t.Fatalf("decoded trace does not re-encode: %v", err)
		}
		again, err := Decode(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("re-encoded trace does not decode: %v", err)
		}
		if !reflect.DeepEqual(again, tr) {
			t.Fatal("re-encoded trace decodes differently")
		}
		if binary.LittleEndian.Uint32(data[8:]) == Version && !bytes.Equal(buf.Bytes(), data[:buf.Len()]) {
			t.Fatal("re-encoding differs from input")
		}
	})
}
