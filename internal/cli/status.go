package cli

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/spf13/cobra"
)

func init() {
	var (
		apiSock string
		wait    bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status [--wait [--timeout D]]",
		Short: "Say whether the pager daemon answers, and list the VMs it serves; --wait waits until it does",
		Long: `status asks the pager daemon at --api ($AQUIFER_API, else
/run/aquifer/api.sock) what it serves: its VMs with their state and, for
those served to the end, where the hot set came from and how many faults
were served on demand, and how many snapshots it can restore. It fails
(exit 1) if no daemon answers.

With --wait it asks again until the daemon answers, for at most --timeout:
what a script runs after starting "aquifer serve ... &" (the control socket
appears once the daemon serves).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !wait && cmd.Flags().Changed("timeout") {
				return fmt.Errorf("--timeout applies to --wait only")
			}
			if wait && timeout <= 0 {
				return fmt.Errorf("--timeout %v: give a positive duration such as 30s", timeout)
			}
			c := apiClient(apiSock)
			if !wait {
				timeout = 0
			}
			vms, err := c.WaitServing(cmd.Context(), timeout)
			if err != nil {
				return err
			}
			snaps, err := c.Snapshots(cmd.Context())
			catalog := true
			if errors.Is(err, api.ErrInvalid) {
				catalog, err = false, nil // serve --images: no catalog
			}
			if err != nil {
				return err
			}
			printStatus(cmd.OutOrStdout(), c.Socket(), vms, len(snaps), catalog)
			return nil
		},
	}
	apiFlag(cmd, &apiSock)
	cmd.Flags().BoolVar(&wait, "wait", false, "ask again until the daemon answers (a daemon starting), for at most --timeout")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "with --wait: give up after this long")
	register(cmd)
}

// printStatus prints one summary line and a line per VM.
func printStatus(w io.Writer, sock string, vms []api.VM, snaps int, catalog bool) {
	states := map[string]int{}
	var order []string
	for _, vm := range vms {
		if states[vm.State] == 0 {
			order = append(order, vm.State)
		}
		states[vm.State]++
	}
	byState := ""
	for i, s := range order {
		if i > 0 {
			byState += ", "
		}
		byState += fmt.Sprintf("%d %s", states[s], s)
	}
	if byState != "" {
		byState = " (" + byState + ")"
	}
	what := fmt.Sprintf("%s published", plural(snaps, "snapshot"))
	if !catalog {
		what = "image files (serve --images, no catalog)"
	}
	fmt.Fprintf(w, "daemon at %s serving: %s%s, %s\n", sock, plural(len(vms), "VM"), byState, what)
	if len(vms) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tSNAPSHOT\tSTATE\tREADY AFTER\tHOT SET FROM\tFAULTS (ZERO/HOT/COLD)\tERROR")
	for _, vm := range vms {
		ready, from, faults := "-", "-", "-"
		if vm.ReadyNS > 0 {
			ready = time.Duration(vm.ReadyNS).Round(time.Microsecond).String()
		}
		if r := vm.Report; r != nil {
			from = r.HotSource
			faults = fmt.Sprintf("%d/%d/%d", r.ZeroFaults, r.HotFaults, r.ColdFaults)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", vm.ID, vm.Snapshot, vm.State, ready, from, faults, vm.Error)
	}
	tw.Flush()
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
