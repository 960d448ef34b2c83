package rdmatest

import (
	"context"
	"testing"
	"time"

	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/rdma"
	"golang.org/x/sys/unix"
)

// Dst maps and registers n bytes of off-heap destination memory.
func Dst(tb testing.TB, tr rdma.Transport, n int) []byte {
	tb.Helper()
	m, err := offheap.Anon(n, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		tb.Fatal(err)
	}
	reg, err := tr.Register(m.B)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { reg.Release(); m.Unmap() })
	return m.B
}

// BenchReads measures 4 KiB-page reads of ref (pages pages long) through c:
// each iteration posts batch reads of distinct pages with one PostReads and
// waits for all completions, keeping depth batches in flight. It reports
// per-batch latency p50/p99 (for batch 1 that is the per-read latency) and
// pages per second. prefix labels the metrics (e.g. "emulated-").
func BenchReads(b *testing.B, c rdma.Conn, ref rdma.SegmentRef, pages, pageSize int, dst []byte, batch, depth int, prefix string) {
	if depth < 1 {
		depth = 1
	}
	ctx := context.Background()
	var h rdma.Histogram
	ops := make([][]rdma.ReadOp, depth)
	posted := make([]time.Time, depth)
	for d := range ops {
		ops[d] = make([]rdma.ReadOp, batch)
	}
	out := make([]rdma.Completion, 1024)
	left := make([]int, depth)
	next := 0
	post := func(slot int) {
		for i := range ops[slot] {
			p := (next + i) % pages
			k := slot*batch + i
			ops[slot][i] = rdma.ReadOp{Seg: ref, Off: uint64(p * pageSize), Dst: dst[k*pageSize : (k+1)*pageSize], Cookie: uint64(slot)}
		}
		next += batch
		left[slot] = batch
		posted[slot] = time.Now()
		if err := c.PostReads(ops[slot]); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	start := time.Now()
	inflight := 0
	issued := 0
	for ; inflight < depth && issued < b.N; issued++ {
		post(inflight)
		inflight++
	}
	for inflight > 0 {
		n, err := c.Poll(ctx, out)
		if err != nil {
			b.Fatal(err)
		}
		for _, cp := range out[:n] {
			if cp.Err != nil {
				b.Fatal(cp.Err)
			}
			s := int(cp.Cookie)
			if left[s]--; left[s] == 0 {
				h.Record(time.Since(posted[s]))
				inflight--
				if issued < b.N {
					post(s)
					issued++
					inflight++
				}
			}
		}
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(h.Quantile(0.5).Nanoseconds()), prefix+"p50-ns")
	b.ReportMetric(float64(h.Quantile(0.99).Nanoseconds()), prefix+"p99-ns")
	b.ReportMetric(float64(b.N*batch)/el.Seconds(), prefix+"pages/s")
	b.ReportMetric(0, "ns/op") // latency is reported above; ns/op mixes batch sizes
}
