package bench

import (
	"fmt"
	"slices"
)

// Strategy names.
const (
	Firecracker     = "firecracker"
	FirecrackerUffd = "firecracker-uffd"
	REAP            = "reap"
	FaaSnap         = "faasnap"
	Aquifer         = "aquifer"
	AquiferCXLOnly  = "aquifer-cxl-only"
	AquiferRDMAOnly = "aquifer-rdma-only"
	AquiferEarly    = "aquifer-early"
	Warm            = "warm"
	// NoRestore is the floor: the trace replayed on memory already
	// resident and already touched, so no access faults at all.
	NoRestore = "no-restore"
)

// AllStrategies in report order.
var AllStrategies = []string{Firecracker, FirecrackerUffd, REAP, FaaSnap, Aquifer, AquiferEarly, AquiferCXLOnly, AquiferRDMAOnly, Warm, NoRestore}

// DefaultStrategies are run unless told otherwise.
var DefaultStrategies = AllStrategies

// CheckStrategies validates a strategy list.
func CheckStrategies(s []string) error {
	for _, x := range s {
		if !slices.Contains(AllStrategies, x) {
			return fmt.Errorf("bench: unknown strategy %q (known: %v)", x, AllStrategies)
		}
	}
	return nil
}
