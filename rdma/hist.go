package rdma

import (
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram is a lock-free log-linear latency histogram (HDR style): 16
// sub-buckets per power of two of nanoseconds, so any quantile is reported
// within 1/16 (6.25%) of its true value, from 1 ns to ~1.2 days. Record is
// safe from any goroutine and costs a few atomic adds.
type Histogram struct {
	counts [64 * subBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64
	max    atomic.Uint64
}

const subBits = 4
const subBuckets = 1 << subBits

func bucketOf(ns uint64) int {
	if ns < subBuckets {
		return int(ns)
	}
	e := bits.Len64(ns) - 1 // ns in [2^e, 2^(e+1))
	sub := (ns >> (uint(e) - subBits)) & (subBuckets - 1)
	return (e-subBits+1)*subBuckets + int(sub)
}

// bucketLow is the smallest value in bucket b.
func bucketLow(b int) uint64 {
	if b < subBuckets {
		return uint64(b)
	}
	e := b/subBuckets + subBits - 1
	sub := uint64(b % subBuckets)
	return (1 << uint(e)) | sub<<(uint(e)-subBits)
}

// Record adds one observation.
func (h *Histogram) Record(d time.Duration) {
	ns := uint64(max(d, 0))
	b := bucketOf(ns)
	if b >= len(h.counts) {
		b = len(h.counts) - 1
	}
	h.counts[b].Add(1)
	h.n.Add(1)
	h.sum.Add(ns)
	for {
		m := h.max.Load()
		if ns <= m || h.max.CompareAndSwap(m, ns) {
			break
		}
	}
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 { return h.n.Load() }

// Mean is the mean observation.
func (h *Histogram) Mean() time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Max is the largest observation.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Quantile returns the q-quantile (0 < q ≤ 1) as the midpoint of its bucket.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for b := range h.counts {
		seen += h.counts[b].Load()
		if seen >= rank {
			lo := bucketLow(b)
			hi := bucketLow(b + 1)
			v := (lo + hi) / 2
			if m := h.max.Load(); v > m {
				v = m
			}
			return time.Duration(v)
		}
	}
	return h.Max()
}

// Reset clears the histogram (not atomic with concurrent Records).
func (h *Histogram) Reset() {
	for b := range h.counts {
		h.counts[b].Store(0)
	}
	h.n.Store(0)
	h.sum.Store(0)
	h.max.Store(0)
}

// String summarises the histogram.
func (h *Histogram) String() string {
	return fmt.Sprintf("n=%d p50=%v p99=%v p99.9=%v max=%v", h.Count(), h.Quantile(0.5), h.Quantile(0.99), h.Quantile(0.999), h.Max())
}
