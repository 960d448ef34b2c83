package realvm

// The only file that talks to the pager daemon (over its API socket).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/api/client"
)

// prepareOnDaemon asks the daemon at c.API to serve VM c.VMID from
// c.Snapshot and returns its UFFD socket, a ready function (the hot set is
// installed, or for aquifer-early the long zero runs are set up) and a wait
// function that, after QEMU exited, reads the faults served and forgets
// the VM.
func (r *run) prepareOnDaemon(ctx context.Context) (string, func(context.Context) error, func() (uint64, error), error) {
	c := r.c
	if c.API == "" || c.Snapshot == "" {
		return "", nil, nil, fmt.Errorf("%s needs a pager daemon (API socket) and a published snapshot", c.Strategy)
	}
	id := c.VMID
	if id == "" {
		id = fmt.Sprintf("realvm-%d-%d", os.Getpid(), time.Now().UnixNano())
	}
	pc := client.New(c.API, client.Options{})
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	vm, err := pc.Prepare(pctx, id, api.PrepareRequest{Snapshot: c.Snapshot, EarlyResume: c.Strategy == AquiferEarly})
	if err != nil {
		return "", nil, nil, err
	}
	deleted := false
	del := func() {
		if !deleted {
			deleted = true
			dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			pc.Delete(dctx, id)
			cancel()
		}
	}
	r.cleanups = append(r.cleanups, del)
	ready := func(ctx context.Context) error {
		_, err := pc.WaitReady(ctx, id, time.Minute)
		return err
	}
	wait := func() (uint64, error) {
		defer del()
		deadline := time.Now().Add(20 * time.Second)
		for {
			gctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := pc.Get(gctx, id)
			cancel()
			if err != nil {
				return 0, err
			}
			switch st.State {
			case api.StateExited, api.StateFailed:
				var n uint64
				if st.Report != nil {
					n = st.Report.Handler.Faults
					r.res.HotSource = st.Report.HotSource
				}
				if st.State == api.StateFailed {
					return n, fmt.Errorf("VM %s failed: %s", id, st.Error)
				}
				return n, nil
			}
			if time.Now().After(deadline) {
				return 0, errors.New("the VM is still served 20 s after QEMU exited")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return vm.Socket, ready, wait, nil
}
