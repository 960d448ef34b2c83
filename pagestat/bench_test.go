package pagestat

import (
	"math/rand/v2"
	"os"
	"sync"
	"testing"
)

// benchFile is a 1 GiB memory file shaped like a snapshot: 83% zero pages
// (written, not sparse, so the scan really reads them), the rest random with
// one page in eight duplicated. It is built once per test binary in /dev/shm
// (or the temporary directory) and removed by TestMain.
var (
	benchOnce sync.Once
	benchPath string
	benchErr  error
)

const benchSize = 1 << 30

func benchFileFor(b *testing.B) string {
	benchOnce.Do(func() {
		dir := "/dev/shm"
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			dir = os.TempDir()
		}
		f, err := os.CreateTemp(dir, "pagestat-bench-*")
		if err != nil {
			benchErr = err
			return
		}
		benchPath = f.Name()
		rng := rand.New(rand.NewPCG(3, 4))
		chunk := make([]byte, 8<<20)
		var dup []byte
		for off := 0; off < benchSize; off += len(chunk) {
			clear(chunk)
			for p := 0; p < len(chunk); p += 4096 {
				x := rng.IntN(1000)
				switch {
				case x < 830:
				case x < 850 && dup != nil:
					copy(chunk[p:p+4096], dup)
				default:
					pg := chunk[p : p+4096]
					for i := 0; i < 4096; i += 8 {
						v := rng.Uint64()
						for j := 0; j < 8; j++ {
							pg[i+j] = byte(v >> (8 * j))
						}
					}
					dup = pg
				}
			}
			if _, err := f.Write(chunk); err != nil {
				benchErr = err
				return
			}
		}
		benchErr = f.Close()
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if benchPath != "" {
		os.Remove(benchPath)
	}
	os.Exit(code)
}

// BenchmarkScan measures `inspect` on a 1 GiB mostly-zero file; the target
// is under 1.5 s per op (>= 716 MB/s).
func BenchmarkScan(b *testing.B) {
	path := benchFileFor(b)
	b.SetBytes(benchSize)
	b.ResetTimer()
	var s *Stats
	for b.Loop() {
		var err error
		if s, err = ScanFile(path, Options{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(s.ZeroPages)/float64(s.Pages), "zero-fraction")
}

// BenchmarkIsZero compares the vectorised zero test with the word-wise one
// on zero pages (the common, worst case: every byte must be read).
func BenchmarkIsZero(b *testing.B) {
	page := make([]byte, 4096)
	b.Run("memequal", func(b *testing.B) {
		b.SetBytes(4096)
		for b.Loop() {
			if !IsZero(page) {
				b.Fatal("non-zero")
			}
		}
	})
	b.Run("words", func(b *testing.B) {
		b.SetBytes(4096)
		for b.Loop() {
			if !isZeroWords(page) {
				b.Fatal("non-zero")
			}
		}
	})
}
