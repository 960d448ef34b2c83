package bench

import (
	"context"

	"github.com/aquifer-pool/aquifer/pager"
	"github.com/aquifer-pool/aquifer/pagerd"
)

// vmReport is the one place the benchmark reads a VM's state from the
// daemon's API (besides the pods' publish calls): the pager's report once
// the VM is gone.
func vmReport(ctx context.Context, api, id string) (rep *pager.Report, done bool, err error) {
	vm, err := pagerd.NewClient(api).Get(ctx, id)
	if err != nil {
		return nil, false, err
	}
	switch vm.State {
	case pagerd.StateExited, pagerd.StateFailed:
		return vm.Report, true, nil
	}
	return nil, false, nil
}
