package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/baseline"
	"github.com/aquifer-pool/aquifer/embed"
	"github.com/spf13/cobra"
)

func init() {
	var c embed.HandlerConfig
	cmd := &cobra.Command{
		Use:   "handle (--socket PATH | --adopt PID --state FILE) (--mem FILE | --image FILE)",
		Short: "Serve one Firecracker VM's page faults on demand from a raw memory file (UFFD backend)",
		Long: `handle listens on --socket (give that path to Firecracker as
mem_backend {"backend_type":"Uffd","backend_path":PATH}), accepts Firecracker's
single connection, receives the userfaultfd and the region list (any dialect
from Firecracker 1.1 on) and serves every page fault from --mem, the snapshot
memory file. Balloon (REMOVE) ranges are answered with zero pages from then on.
It exits 0 when the VM process exits and prints one summary line (with
--reap-ws it ends "; ws fetch N ns": how long reading the working-set file
took, before the socket listened). Only the uid
Firecracker runs as (--vmm-uid; default this process's) may connect: another
peer is refused and the socket keeps waiting. A malformed handshake exits 2.

With --record FILE it also records every first touch (page, read/write, time
since the first fault) in fault order: a working set for REAP-style prefetch
and for Aquifer's hot set.

With --state FILE it records the VM it serves (the VMM's pid and start time,
its userfaultfd, the regions) and its balloon ranges (FILE.removes). If this
handler dies or is stopped, the VM's vCPUs wait; start it again with
--adopt PID --state FILE (and the same --mem or --image): it takes the
userfaultfd back from the VMM process (pidfd_getfd: the VMM's uid, or
CAP_SYS_PTRACE), wakes the faults its predecessor left unanswered and
serves on.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := embed.RunHandler(ctx, c)
			if res != nil {
				line := res.Stats.String()
				if r := res.Report; r != nil {
					line += fmt.Sprintf("; pre-installed %d hot pages in %v, cold extents %d demand + %d prefetch",
						r.PreinstallPages, r.Preinstall.Round(time.Microsecond), r.ColdDemandExtents, r.ColdPrefetchExtent)
				}
				if res.REAPFetch > 0 {
					line += "; " + baseline.WSFetchSummary(res.REAPFetch)
				}
				if a := res.Adopted; a != nil {
					line += fmt.Sprintf("; re-adopted %s: %d faults left unanswered were woken, %d balloon ranges replayed, first fault served %v after start",
						a.VMM, a.Unanswered, a.Removed, a.Stall.Round(time.Microsecond))
				}
				fmt.Fprintf(cmd.OutOrStdout(), "aquifer handle: %s\n", line)
				if c.Record != "" && err == nil {
					slog.Info("recorded working set", "file", c.Record, "pages", res.RecordedPages)
				}
			}
			if errors.Is(err, embed.ErrHandshake) {
				return &exitError{code: 2, err: err}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Socket, "socket", "", "Unix socket path to listen on (Firecracker's backend_path)")
	f.StringVar(&c.Mem, "mem", "", "raw Firecracker snapshot memory file")
	f.StringVar(&c.Record, "record", "", "write the recorded working set to this file when the VM exits")
	f.IntVar(&c.Workers, "workers", 2, "fault-serving threads")
	f.IntVar(&c.Nice, "nice", 0, "nice value of the handler's threads, -20..19 (below 0: the VM's faults do not wait behind other processes for a CPU; needs CAP_SYS_NICE)")
	f.IntVar(&c.VMMUID, "vmm-uid", -1, "uid Firecracker runs as (under the jailer): the only uid admitted (default: this process's uid)")
	f.DurationVar(&c.AcceptTimeout, "accept-timeout", 0, "give up if Firecracker has not connected after this long (0: wait forever)")
	f.StringVar(&c.Image, "image", "", "serve an Aquifer image (aquifer convert) from local disk with the pager instead of a raw memory file")
	f.StringVar(&c.ReadyFile, "ready-file", "", "with --image: create this file once the hot set is installed (resume the VM after it appears)")
	f.StringVar(&c.REAPWS, "reap-ws", "", "REAP baseline: working-set file (aquifer baseline reap) installed whole at the first fault")
	f.StringVar(&c.State, "state", "", "record the VM served here in this file (removed when it exits), so that a restarted handler can take it back with --adopt")
	f.IntVar(&c.Adopt, "adopt", 0, "take back the VM of this VMM pid, as --state recorded it, instead of waiting for a handshake")
	register(cmd)
}
