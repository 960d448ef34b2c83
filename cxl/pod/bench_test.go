package pod_test

import (
	"context"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/cxl/pod"
	"github.com/aquifer-pool/aquifer/cxl/pod/podtest"
	"github.com/aquifer-pool/aquifer/cxl/shm"
	"github.com/aquifer-pool/aquifer/offheap"
	"golang.org/x/sys/unix"
)

// BenchmarkHotSegmentInstall measures, side by side in one run, installing a
// 2 MiB hot segment from the pod region into guest memory:
//
//   - memcpy: copy from the region into pre-faulted anonymous memory (the
//     plain memcpy bound, no page faults);
//   - uffd-batch: UFFDIO_COPY straight from the region's mapping into
//     uffd-registered (MISSING) memory, 64 pages per ioctl, DONTWAKE;
//   - uffd-page: the same, one ioctl per 4 KiB page;
//   - protocol+uffd: Pod.Install (descriptor check, CLFLUSHOPT of the
//     extent, MFENCE, xxhash of the extent in place, batched UFFDIO_COPY,
//     generation re-check).
//
// The region is an emulated pod (/dev/shm, local DRAM, no latency model):
// the numbers are EMULATED, not CXL hardware. The guest range is zapped with
// MADV_DONTNEED between iterations, outside the timed sections.
// Run: go test -run '^$' -bench HotSegment ./cxl/pod
func BenchmarkHotSegmentInstall(b *testing.B) {
	const seg = 2 << 20
	const batch = 64 * pod.PageSize
	const size = 16 << 20
	path, _ := formatTempPod(b, "aquifer-bench", size, pod.FormatOptions{})
	r, err := shm.Open(path, shm.All(size), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	p, err := pod.Open(ctx, r, 0, podtest.NewMemCoordinator(), pod.Options{Owner: true})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Acquire(ctx, 0); err != nil {
		b.Fatal(err)
	}
	ref, err := p.Publish(ctx, "hot", payload(1, 1, seg))
	if err != nil {
		b.Fatal(err)
	}
	d, _ := pod.LoadDesc(r, p.Geometry().DescOffset(ref.Desc), true)
	src := r.Addr(int64(d.Off))

	f, guest := uffdGuest(b, seg)
	plain, err := offheap.Anon(seg, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer plain.Unmap()
	copy(plain.B, r.Bytes()[d.Off:d.Off+seg]) // pre-fault

	zap := func() {
		if err := unix.Madvise(guest.B, unix.MADV_DONTNEED); err != nil {
			b.Fatal(err)
		}
	}
	uffdCopy := func(step int) {
		for off := 0; off < seg; off += step {
			if _, err := f.Copy(guest.Addr()+uintptr(off), src+uintptr(off), uintptr(step), true); err != nil {
				b.Fatal(err)
			}
		}
	}
	var tMemcpy, tBatch, tPage, tProto time.Duration
	b.SetBytes(seg)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		copy(plain.B, r.Bytes()[d.Off:d.Off+seg])
		tMemcpy += time.Since(t0)

		b.StopTimer()
		zap()
		b.StartTimer()
		t0 = time.Now()
		uffdCopy(batch)
		tBatch += time.Since(t0)

		b.StopTimer()
		zap()
		b.StartTimer()
		t0 = time.Now()
		uffdCopy(pod.PageSize)
		tPage += time.Since(t0)

		b.StopTimer()
		zap()
		b.StartTimer()
		t0 = time.Now()
		n, err := p.Install(ref, func(addr uintptr, n int) error {
			for o := 0; o < n; o += batch {
				l := min(batch, (n-o+pod.PageSize-1)/pod.PageSize*pod.PageSize)
				if _, err := f.Copy(guest.Addr()+uintptr(o), addr+uintptr(o), uintptr(l), true); err != nil {
					return err
				}
			}
			return nil
		})
		tProto += time.Since(t0)
		if err != nil || n != seg {
			b.Fatalf("install: %d bytes, %v", n, err)
		}
		b.StopTimer()
		if _, _, ok := check(guest.B[:seg]); !ok {
			b.Fatal("installed guest memory does not match the published segment")
		}
		zap()
		b.StartTimer()
	}
	b.StopTimer()
	gbps := func(t time.Duration) float64 { return float64(seg) * float64(b.N) / t.Seconds() / 1e9 }
	b.ReportMetric(gbps(tMemcpy), "memcpy-GB/s")
	b.ReportMetric(gbps(tBatch), "uffd-batch-GB/s")
	b.ReportMetric(gbps(tPage), "uffd-page-GB/s")
	b.ReportMetric(gbps(tProto), "proto+uffd-GB/s")
	b.ReportMetric(float64(tBatch)/float64(tMemcpy), "uffd-batch/memcpy")
	b.ReportMetric(float64(tProto)/float64(tMemcpy), "proto+uffd/memcpy")
	b.Logf("EMULATED pod (/dev/shm, local DRAM), 2 MiB hot segment, %d iterations: memcpy %.2f GB/s, UFFDIO_COPY batched(64 pages) %.2f GB/s, per-page %.2f GB/s, protocol+batched %.2f GB/s; time ratio uffd-batch/memcpy = %.2fx, protocol+uffd/memcpy = %.2fx",
		b.N, gbps(tMemcpy), gbps(tBatch), gbps(tPage), gbps(tProto), float64(tBatch)/float64(tMemcpy), float64(tProto)/float64(tMemcpy))
}
