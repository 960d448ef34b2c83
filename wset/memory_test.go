package wset

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// The fingerprint is the xxhash64 of the file's bytes, holes read as zeros.
func TestFingerprintFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "mem")
	content := make([]byte, 9<<20+123)
	for i := range content[:5000] {
		content[i] = byte(i * 7)
	}
	copy(content[8<<20:], "tail")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: only the non-zero stretches are written.
	f.WriteAt(content[:5000], 0)
	f.WriteAt([]byte("tail"), 8<<20)
	f.Truncate(int64(len(content)))
	f.Close()
	fp, err := FingerprintFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Fingerprint{Size: uint64(len(content)), XXH64: xxhash.Sum64(content)}); fp != want {
		t.Fatalf("fingerprint %v, want %v", fp, want)
	}
	content[len(content)-1] = 1
	os.WriteFile(p, content, 0o644)
	if fp2, _ := FingerprintFile(p); fp2 == fp {
		t.Fatal("a changed byte did not change the fingerprint")
	}
	if _, err := FingerprintFile(filepath.Join(dir, "none")); err == nil {
		t.Fatal("fingerprint of a missing file")
	}
}

func TestBind(t *testing.T) {
	tr := sampleTrace(3)
	if err := tr.Bind(Fingerprint{Size: tr.MemSize + 4096, XXH64: 1}); err == nil {
		t.Fatal("bound to a memory of another size")
	}
	if err := tr.Bind(Fingerprint{}); err == nil {
		t.Fatal("bound to an empty memory")
	}
	fp := Fingerprint{Size: tr.MemSize, XXH64: 42}
	if err := tr.Bind(fp); err != nil {
		t.Fatal(err)
	}
	if tr.BindingTo(fp) != Bound || tr.BindingTo(Fingerprint{Size: fp.Size, XXH64: 43}) != Foreign {
		t.Fatal("binding")
	}
	if err := tr.Validate(); err != nil {
		t.Fatal(err)
	}
	tr.MemSize = 0
	if err := tr.Validate(); err == nil {
		t.Fatal("a bound trace without memory size validated")
	}
	u := &Trace{PageSize: 4096}
	if err := u.Bind(fp); err != nil || u.MemSize != fp.Size {
		t.Fatalf("binding a trace of unknown size: %v, size %d", err, u.MemSize)
	}
	if (&Trace{}).BindingTo(fp) != Unbound {
		t.Fatal("unbound")
	}
}

func TestCheckMemory(t *testing.T) {
	own := Fingerprint{Size: 128 << 20, XXH64: 0x1111}
	other := Fingerprint{Size: 128 << 20, XXH64: 0x2222}
	tr := sampleTrace(3)
	tr.Bind(own)
	if w, err := CheckMemory(tr, "rec.ws", "fn/mem", own, false); w != "" || err != nil {
		t.Fatalf("own memory: warning %q, error %v", w, err)
	}
	w, err := CheckMemory(tr, "rec.ws", "other/mem", other, false)
	var fe *ForeignError
	if w != "" || !errors.As(err, &fe) {
		t.Fatalf("foreign memory: warning %q, error %v, want a ForeignError", w, err)
	}
	for _, want := range []string{"rec.ws", "other/mem", "xxh64 0000000000001111", "xxh64 0000000000002222", "--allow-foreign-ws"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("foreign error %q does not name %q", err, want)
		}
	}
	w, err = CheckMemory(tr, "rec.ws", "other/mem", other, true)
	if err != nil || !strings.Contains(w, "another memory") || !strings.Contains(w, "--allow-foreign-ws") {
		t.Fatalf("foreign memory allowed: warning %q, error %v", w, err)
	}
	w, err = CheckMemory(sampleTrace(3), "old.ws", "fn/mem", own, false)
	if err != nil || !strings.Contains(w, "does not say which memory") || !strings.Contains(w, "aquifer ws bind --mem fn/mem old.ws") {
		t.Fatalf("unbound: warning %q, error %v", w, err)
	}
}
