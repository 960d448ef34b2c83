package snapimage

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aquifer-pool/aquifer/wset"
)

// Convert refuses a working set recorded from another memory of the same
// size, converts with its own, with a foreign one when told to, and with an
// unbound one with a warning; the fingerprint it reports is the memory
// file's, from the classification pass.
func TestConvertChecksWorkingSetMemory(t *testing.T) {
	for _, pageSize := range []uint32{0, 2 << 20} {
		s := memSpec{size: 8 << 20, zeroFrac: 0.3}
		memA, memB := makeMem(t, s, 1), makeMem(t, s, 2)
		pathA, pathB := writeMem(t, memA), writeMem(t, memB)
		fpA, err := wset.FingerprintFile(pathA)
		if err != nil {
			t.Fatal(err)
		}
		fpB, _ := wset.FingerprintFile(pathB)
		if fpA == fpB || fpA.Size != fpB.Size {
			t.Fatalf("test memories: %v and %v", fpA, fpB)
		}
		rec := makeTrace(len(memA)/ps, 300, 3)
		if err := rec.Bind(fpA); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		conv := func(mem string, tr *wset.Trace, allow bool) (*Stats, error) {
			return Convert(mem, filepath.Join(dir, "img"), ConvertOptions{Trace: tr, TraceName: "rec.ws", AllowForeignWS: allow, PageSize: pageSize})
		}

		st, err := conv(pathA, rec, false)
		if err != nil {
			t.Fatalf("own memory: %v", err)
		}
		if st.WorkingSet != "bound" || len(st.Warnings) != 0 || st.MemoryXXH64 != hex16(fpA.XXH64) || st.HotPages == 0 {
			t.Fatalf("own memory: binding %q, warnings %q, memory %s (want %s), %d hot", st.WorkingSet, st.Warnings, st.MemoryXXH64, hex16(fpA.XXH64), st.HotPages)
		}

		_, err = conv(pathB, rec, false)
		var fe *wset.ForeignError
		if !errors.As(err, &fe) || fe.Recorded != fpA || fe.Memory != fpB {
			t.Fatalf("foreign memory: %v, want a ForeignError %v against %v", err, fpA, fpB)
		}
		for _, want := range []string{"rec.ws", pathB, hex16(fpA.XXH64), hex16(fpB.XXH64), "--allow-foreign-ws"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("foreign memory: error %q does not name %q", err, want)
			}
		}

		st, err = conv(pathB, rec, true)
		if err != nil {
			t.Fatalf("foreign memory, allowed: %v", err)
		}
		if st.WorkingSet != "foreign" || len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "another memory") {
			t.Fatalf("foreign memory, allowed: binding %q, warnings %q", st.WorkingSet, st.Warnings)
		}
		if _, err := Verify(filepath.Join(dir, "img"), pathB, nil); err != nil {
			t.Fatalf("foreign memory, allowed: the image does not verify against its memory: %v", err)
		}

		unbound := *rec
		unbound.Memory = nil
		st, err = conv(pathA, &unbound, false)
		if err != nil {
			t.Fatalf("unbound: %v", err)
		}
		if st.WorkingSet != "unbound" || len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "does not say which memory") {
			t.Fatalf("unbound: binding %q, warnings %q", st.WorkingSet, st.Warnings)
		}

		st, err = conv(pathA, nil, false)
		if err != nil || st.WorkingSet != "" || st.MemoryXXH64 != hex16(fpA.XXH64) {
			t.Fatalf("no working set: %v, binding %q, memory %s", err, st.WorkingSet, st.MemoryXXH64)
		}
	}
}

// The fingerprint does not depend on the classification pass reading in
// order: out-of-order reads fall back to a second sequential pass.
func TestHashingReaderAtOutOfOrder(t *testing.T) {
	data := makeMem(t, memSpec{size: 1 << 20}, 4)
	want := wset.NewHasher()
	want.Write(data)
	hr := &hashingReaderAt{r: bytes.NewReader(data), h: wset.NewHasher()}
	b := make([]byte, 4096)
	hr.ReadAt(b, 0)
	hr.ReadAt(b, 8192)
	hr.ReadAt(b, 4096)
	fp, err := hr.fingerprint(uint64(len(data)))
	if err != nil || fp != want.Fingerprint() {
		t.Fatalf("out of order: %v, %v, want %v", fp, err, want.Fingerprint())
	}
	hr = &hashingReaderAt{r: bytes.NewReader(data), h: wset.NewHasher()}
	hr.ReadAt(make([]byte, len(data)/2), 0)
	hr.ReadAt(make([]byte, len(data)/2), int64(len(data)/2))
	if hr.lost || hr.next != int64(len(data)) {
		t.Fatal("in-order reads were not hashed as they came")
	}
	if fp, _ := hr.fingerprint(uint64(len(data))); fp != want.Fingerprint() {
		t.Fatalf("in order: %v, want %v", fp, want.Fingerprint())
	}
}

func hex16(x uint64) string {
	const d = "0123456789abcdef"
	b := make([]byte, 16)
	for i := 15; i >= 0; i-- {
		b[i] = d[x&15]
		x >>= 4
	}
	return string(b)
}
