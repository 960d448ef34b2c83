package shm

import (
	"os"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/cxl"
	"golang.org/x/sys/unix"
)

func TestTwoMappingsShare(t *testing.T) {
	path := TempPath("aquifer-shm-test")
	if err := Create(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	if err := Create(path, 1<<20); err == nil {
		t.Fatal("Create overwrote an existing pod file")
	}
	w, err := Open(path, []cxl.Window{{Off: 4096, Len: 8192}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, err := Open(path, nil, DefaultModel())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w.Store64(4096, 0xfeed)
	w.Flush(4096, 8)
	w.Fence()
	r.Invalidate(4096, 8)
	r.FullFence()
	if got := r.Load64(4096); got != 0xfeed {
		t.Fatalf("second mapping read %#x", got)
	}
	if r.Writable(4096, 8) || !w.Writable(4096, 8) || w.Writable(0, 8) {
		t.Fatal("windows not honoured")
	}
	// The latency model must cost at least its latency per read.
	buf := make([]byte, 64)
	start := time.Now()
	for i := 0; i < 1000; i++ {
		r.ReadAt(buf, 4096)
	}
	if el := time.Since(start); el < 250*time.Microsecond {
		t.Fatalf("1000 modelled reads took %v, want >= 250µs", el)
	}
	if _, err := Open(path, []cxl.Window{{Off: 100, Len: 8}}, nil); err == nil {
		t.Fatal("unaligned window accepted")
	}
}

func TestMemfd(t *testing.T) {
	fd, err := Memfd("aquifer-test", 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	a, err := OpenFd(fd, 1<<16, All(1<<16), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := OpenFd(fd, 1<<16, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.WriteAt([]byte("pod"), 64)
	got := make([]byte, 3)
	b.ReadAt(got, 64)
	if string(got) != "pod" {
		t.Fatalf("memfd mappings do not share: %q", got)
	}
}
