package diskemu

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestQueueSchedule(t *testing.T) {
	m := Model{Latency: 100 * time.Microsecond, Bandwidth: 1e9, IOPS: 10000, ReadAheadKB: 128, MaxRequestKB: 128}
	q := queue{m: m, inject: m.Latency}
	t0 := time.Unix(0, 0)
	// QD1, idle device: latency + wire.
	if got, want := q.schedule(t0, 4096), t0.Add(100*time.Microsecond+4096*time.Nanosecond); !got.Equal(want) {
		t.Fatalf("idle 4 KiB: %v, want %v", got.Sub(t0), want.Sub(t0))
	}
	// Two requests at once: latencies overlap, the second is admitted one
	// IOPS interval later and transfers after the first.
	q = queue{m: m, inject: m.Latency}
	a := q.schedule(t0, 1<<20)
	b := q.schedule(t0, 4096)
	if want := t0.Add(100*time.Microsecond + time.Duration(1<<20)); !a.Equal(want) {
		t.Fatalf("1 MiB: %v", a.Sub(t0))
	}
	if want := a.Add(4096); !b.Equal(want) {
		t.Fatalf("second request waits for the channel: %v, want %v", b.Sub(t0), want.Sub(t0))
	}
	// Completion times never decrease in arrival order (the FIFO relies on it).
	q = queue{m: m, inject: m.Latency}
	rng := rand.New(rand.NewPCG(1, 2))
	now, last := t0, time.Time{}
	for i := 0; i < 10000; i++ {
		now = now.Add(time.Duration(rng.IntN(200)) * time.Microsecond)
		d := q.schedule(now, 4096*(1+rng.IntN(32)))
		if d.Before(last) || d.Before(now.Add(m.Latency)) {
			t.Fatalf("request %d: completion %v before %v or before latency", i, d, last)
		}
		last = d
	}
	// The IOPS cap holds over a burst.
	q = queue{m: m, inject: 0}
	var end time.Time
	for i := 0; i < 1000; i++ {
		end = q.schedule(t0, 0)
	}
	if end.Sub(t0) < 99*time.Millisecond {
		t.Fatalf("1000 requests at 10k IOPS done after %v", end.Sub(t0))
	}
	if err := (Model{Name: "x", ReadAheadKB: 6, MaxRequestKB: 128}).Validate(); err == nil {
		t.Fatal("read_ahead_kb 6 accepted")
	}
}

// TestMountServes mounts the model over a tmpfs directory and checks that
// reads, mmap faults (MAP_PRIVATE) and readahead go through it byte for byte.
func TestMountServes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root here")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse on this machine:", err)
	}
	back := t.TempDir()
	os.MkdirAll(filepath.Join(back, "w"), 0o755)
	data := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(filepath.Join(back, "w", "mem"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	m := NVMe()
	mt, err := NewMount(filepath.Join(t.TempDir(), "mnt"), back, m)
	if err != nil {
		t.Fatal(err)
	}
	defer mt.Close()
	p, err := mt.Path(filepath.Join(back, "w", "mem"))
	if err != nil {
		t.Fatal(err)
	}
	if kb, err := mt.ReadAheadKB(); err != nil || kb != m.ReadAheadKB {
		t.Fatalf("read_ahead_kb %d (%v), want %d", kb, err, m.ReadAheadKB)
	}
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read through the model differs (%v)", err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	before := mt.Stats().Requests
	b, err := unix.Mmap(int(f.Fd()), 0, len(data), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	for _, off := range []int{0, 3 << 20, 5<<20 + 4096*7} {
		if !bytes.Equal(b[off:off+4096], data[off:off+4096]) {
			t.Fatalf("mmap page at %d differs", off)
		}
	}
	b[4096] ^= 0xff // private copy: the file must not change
	if st := mt.Stats(); st.Requests == before {
		t.Fatal("mmap faults after dropping the cache sent no request to the model")
	}
	if again, _ := os.ReadFile(p); !bytes.Equal(again, data) {
		t.Fatal("a MAP_PRIVATE write reached the file")
	}
	probes, err := mt.Calibrate(p, 40)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range probes {
		t.Logf("%s storage model: %v (FUSE overhead %v)", m.Name, pr, mt.Overhead)
	}
}
