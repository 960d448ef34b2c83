package bench

import (
	"context"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/api/client"
)

// vmReport is the one place the benchmark reads a VM's state from the
// daemon's API (besides the pods' publish calls): the pager's report once
// the VM is gone.
func vmReport(ctx context.Context, sock, id string) (rep *api.Report, done bool, err error) {
	vm, err := client.New(sock, client.Options{}).Get(ctx, id)
	if err != nil {
		return nil, false, err
	}
	switch vm.State {
	case api.StateExited, api.StateFailed:
		return vm.Report, true, nil
	}
	return nil, false, nil
}
