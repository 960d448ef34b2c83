//go:build !amd64

package cxl

import "sync/atomic"

// Other architectures have no cache-maintenance implementation yet (arm64
// would use DC CVAC / DC CIVAC + DMB). Flush and invalidate are no-ops there
// and Caps reports no instruction, so a real non-coherent device must not be
// used on them; the fences still order memory within one host.

var fenceWord atomic.Uint64

func detect() Caps { return Caps{} }

func sfence() { fenceWord.Add(0) }
func mfence() { fenceWord.Add(0) }

func pickFlush(c Caps, force string) (flushFn, invalFn lineFunc, fname, iname string) {
	return noLines, noLines, "none", "none"
}
