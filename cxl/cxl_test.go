package cxl

import (
	"runtime"
	"testing"

	"github.com/aquifer-pool/aquifer/offheap"
	"golang.org/x/sys/unix"
)

func TestDetect(t *testing.T) {
	p := Detect()
	t.Logf("%s", p)
	if runtime.GOARCH == "amd64" {
		if !p.Caps.CLFLUSH {
			t.Fatal("every x86-64 CPU has CLFLUSH; CPUID decoding is wrong")
		}
		want := "clflush"
		if p.Caps.CLFLUSHOPT {
			want = "clflushopt"
		}
		if p.Caps.CLWB {
			want = "clwb"
		}
		if p.Flush != want {
			t.Fatalf("flush primitive %q, want %q for %+v", p.Flush, want, p.Caps)
		}
	}
}

func TestLineSpan(t *testing.T) {
	for _, c := range []struct{ off, n, start, lines int64 }{
		{0, 0, 0, 0}, {0, 1, 0, 1}, {0, 64, 0, 1}, {1, 64, 0, 2}, {63, 2, 0, 2}, {128, 4096, 128, 64}, {100, 0, 64, 0},
	} {
		s, l := LineSpan(c.off, c.n)
		if s != c.start || l != c.lines {
			t.Errorf("LineSpan(%d,%d) = %d,%d want %d,%d", c.off, c.n, s, l, c.start, c.lines)
		}
	}
}

// TestMappedPrimitives runs every flush variant over a real shared mapping and
// checks that the data survives (the instructions must not fault or corrupt).
func TestMappedPrimitives(t *testing.T) {
	m, err := offheap.Anon(1<<16, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	r := NewMapped(m.B, 4096, []Window{{0, 1 << 15}}, nil)
	for i := int64(0); i < 1<<15; i += 8 {
		r.Store64(i, uint64(i)*7)
	}
	r.Flush(3, 1<<15-3)
	r.Fence()
	r.Invalidate(0, 1<<16)
	r.FullFence()
	// Exercise each instruction the CPU has, not only the chosen one.
	c := Detect().Caps
	for _, v := range []struct {
		ok bool
		f  lineFunc
	}{{c.CLFLUSH, clflushLines}, {c.CLFLUSHOPT, clflushoptLines}, {c.CLWB, clwbLines}} {
		if v.ok {
			v.f(r.Addr(0), 512)
			sfence()
			mfence()
		}
	}
	for i := int64(0); i < 1<<15; i += 8 {
		if got := r.Load64(i); got != uint64(i)*7 {
			t.Fatalf("word %d = %d after flush/invalidate", i, got)
		}
	}
	if !r.Writable(0, 64) || r.Writable(1<<15, 8) {
		t.Fatal("window check wrong")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("store outside the writable window did not panic")
		}
	}()
	r.Store64(1<<15, 1)
}
