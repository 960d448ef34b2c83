// Package hugetlbtest gives tests the 2 MiB huge pages they need: it grows
// the host's pool (never shrinking it: the pool is shared with every other
// test on the machine) or skips the test with the reason when the pool
// truly cannot be grown. It must not be imported by non-test code.
package hugetlbtest

import (
	"testing"

	"github.com/aquifer-pool/aquifer/hugetlb"
)

// Need makes n 2 MiB huge pages available to the calling test, or skips it
// saying why they cannot be reserved.
func Need(tb testing.TB, n int) hugetlb.Pool {
	tb.Helper()
	p, err := hugetlb.Grow(n)
	if err != nil {
		tb.Skipf("needs %d free 2 MiB huge pages, which cannot be reserved here: %v", n, err)
	}
	return p
}
