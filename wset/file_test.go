package wset

import (
	"bytes"
	"errors"
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

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 1023, 1024, 1025, 10000} {
		tr := sampleTrace(n)
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
			t.Fatalf("n=%d: round trip differs", n)
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
	tr := sampleTrace(40)
	var buf bytes.Buffer
	if err := Encode(&buf, tr); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
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
	bad[headerLen+len(tr.Source)+5*recordLen] ^= 1
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

func FuzzDecode(f *testing.F) {
	for _, n := range []int{0, 1, 3} {
		var buf bytes.Buffer
		if err := Encode(&buf, sampleTrace(n)); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		// Anything that decodes must re-encode to the same bytes.
		var buf bytes.Buffer
		if err := Encode(&buf, tr); err != nil {
			t.Fatalf("decoded trace does not re-encode: %v", err)
		}
		if !bytes.Equal(buf.Bytes(), data[:buf.Len()]) {
			t.Fatal("re-encoding differs from input")
		}
	})
}
