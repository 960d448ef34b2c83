package bench

import (
	"fmt"
	"slices"

	"github.com/aquifer-pool/aquifer/realvm"
)

// Strategy names: one set for the emulator and the real guests (realvm).
const (
	Firecracker     = realvm.Firecracker
	FirecrackerUffd = realvm.FirecrackerUffd
	REAP            = realvm.REAP
	FaaSnap         = realvm.FaaSnap
	Aquifer         = realvm.Aquifer
	AquiferCXLOnly  = realvm.AquiferCXLOnly
	AquiferRDMAOnly = realvm.AquiferRDMAOnly
	AquiferEarly    = realvm.AquiferEarly
	Warm            = realvm.Warm
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
			return fmt.Errorf("unknown strategy %q (known: %v)", x, AllStrategies)
		}
	}
	return nil
}
