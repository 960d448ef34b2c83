package rdma

import (
	"testing"
	"time"
)

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {0.01, 10 * time.Microsecond}} {
		got := h.Quantile(c.q)
		if d := float64(got-c.want) / float64(c.want); d > 0.0625 || d < -0.0625 {
			t.Errorf("q%.2f = %v, want %v ±6.25%%", c.q, got, c.want)
		}
	}
	if h.Max() != time.Millisecond || h.Count() != 1000 {
		t.Fatalf("max %v count %d", h.Max(), h.Count())
	}
	for ns := uint64(0); ns < 1<<20; ns = ns*9/8 + 1 {
		b := bucketOf(ns)
		if lo, hi := bucketLow(b), bucketLow(b+1); ns < lo || ns >= hi {
			t.Fatalf("%d in bucket %d [%d,%d)", ns, b, lo, hi)
		}
	}
}
