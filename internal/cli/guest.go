package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/guest"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/pagerd"
	"github.com/aquifer-pool/aquifer/wset"
	"github.com/spf13/cobra"
)

func init() {
	g := &cobra.Command{
		Use:   "guest",
		Short: "Firecracker-faithful guest emulator: restore a VM and replay a page-access trace",
	}
	var (
		mem, tracePath, backend, socket, fcVersion, gapStart, balloon string
		waitReady, faasnapPlan                                        string
		pagerAPI, vmID, snapshot                                      string
		earlyResume                                                   bool
		vcpus                                                         int
		think                                                         float64
		dropCache, noVerify, asJSON                                   bool
		refPath                                                       string
		touchTimes, noFaults                                          bool
	)
	run := &cobra.Command{
		Use:   "run --mem FILE --trace FILE [--backend uffd|file]",
		Short: "Restore like Firecracker (Uffd or File backend), replay the trace on vCPU threads, verify every byte",
		Long: `run restores a VM the way Firecracker does and replays a working-set trace.

With --backend uffd it maps anonymous guest memory laid out like Firecracker's
x86_64 map, creates a userfaultfd, registers the regions and sends the region
JSON of --fc-version's dialect plus the fd to --socket, where a handler
(aquifer handle, or the pager) must be listening. With --backend file it maps
the memory file MAP_PRIVATE like stock Firecracker (--drop-cache makes the
restore cold). vCPU threads then touch the traced pages and verify every page
against --mem. --balloon OFFSET:LEN discards that range at the trace's midpoint
as Firecracker's balloon does; it must read as zeros afterwards.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			tr, err := wset.ReadFile(tracePath)
			if err != nil {
				return err
			}
			cfg := guest.Config{MemPath: mem, Backend: guest.Backend(backend), Socket: socket, VCPUs: vcpus,
				Trace: tr, ThinkScale: think, DropCache: dropCache, NoVerify: noVerify,
				RefPath: refPath, TouchTimes: touchTimes, NoFaults: noFaults}
			if cfg.Dialect, err = handshake.ParseDialect(fcVersion); err != nil {
				return err
			}
			if gapStart != "" {
				if cfg.GapStart, err = parseSize(gapStart); err != nil {
					return err
				}
			}
			if balloon != "" {
				off, ln, ok := strings.Cut(balloon, ":")
				if !ok {
					return fmt.Errorf("--balloon wants OFFSET:LEN, got %q", balloon)
				}
				var b guest.Balloon
				if b.Offset, err = parseSize(off); err != nil {
					return err
				}
				if b.Len, err = parseSize(ln); err != nil {
					return err
				}
				cfg.Balloon = &b
			}
			if faasnapPlan != "" {
				if cfg.FaaSnap, err = guest.ReadFaaSnapPlan(faasnapPlan); err != nil {
					return err
				}
			}
			if pagerAPI != "" {
				// Act as the orchestrator: prepare the restore on the pager
				// daemon, load through its socket, resume once it is ready.
				if vmID == "" || snapshot == "" {
					return fmt.Errorf("--pager-api needs --vm and --snapshot")
				}
				pc := pagerd.NewClient(pagerAPI)
				vm, err := pc.PrepareWith(cmd.Context(), vmID, snapshot, pagerd.PrepareOptions{EarlyResume: earlyResume})
				if err != nil {
					return err
				}
				cfg.Socket = vm.Socket
				cfg.Resumed = func(ctx context.Context) error {
					_, err := pc.WaitReady(ctx, vmID, time.Minute)
					return err
				}
			}
			if waitReady != "" {
				cfg.Resumed = func(ctx context.Context) error { return waitForFile(ctx, waitReady) }
			}
			if cfg.Backend == guest.BackendUffd && cfg.Socket == "" {
				return fmt.Errorf("--backend uffd needs --socket")
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, runErr := guest.Run(ctx, cfg)
			if rep != nil {
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					enc.Encode(rep)
				} else {
					fmt.Fprintf(cmd.OutOrStdout(),
						"guest: backend %s dialect %s regions %d vcpus %d: %d accesses over %d pages, restore %v, first touch %v, end-to-end %v, verified %d pages, mismatches %d\n",
						rep.Backend, rep.Dialect, rep.Regions, rep.VCPUs, rep.Accesses, rep.Pages,
						rep.Restore, rep.FirstTouch, rep.EndToEnd, rep.Verified, rep.Mismatches)
				}
			}
			return runErr
		},
	}
	f := run.Flags()
	f.StringVar(&mem, "mem", "", "snapshot memory file (mapped by the File backend; reference for verification)")
	f.StringVar(&tracePath, "trace", "", "working-set / access trace file to replay")
	f.StringVar(&backend, "backend", "uffd", "memory backend: uffd, file, or faasnap (the FaaSnap baseline's mapping; needs --faasnap-plan)")
	f.StringVar(&pagerAPI, "pager-api", "", "restore through the pager daemon at this control socket (aquifer serve)")
	f.StringVar(&vmID, "vm", "", "VM id for --pager-api")
	f.BoolVar(&earlyResume, "early-resume", false, "with --pager-api: resume before the whole hot set is installed (it streams in)")
	f.StringVar(&snapshot, "snapshot", "", "snapshot name for --pager-api")
	f.StringVar(&faasnapPlan, "faasnap-plan", "", "FaaSnap mapping plan (aquifer baseline faasnap)")
	f.StringVar(&socket, "socket", "", "handler socket (uffd backend)")
	f.StringVar(&fcVersion, "fc-version", "1.12", "Firecracker version whose handshake dialect to speak (1.1–1.6, 1.7–1.11, 1.12+)")
	f.StringVar(&gapStart, "gap-start", "", "start of the MMIO gap (default 3GiB; smaller values give small VMs two regions)")
	f.StringVar(&balloon, "balloon", "", "OFFSET:LEN of guest memory to discard at the trace's midpoint")
	f.IntVar(&vcpus, "vcpus", 2, "vCPU threads")
	f.Float64Var(&think, "think-scale", 0, "multiply the trace's think times (0: none)")
	f.BoolVar(&dropCache, "drop-cache", false, "drop the memory file's page cache first (File backend cold restore)")
	f.BoolVar(&noVerify, "no-verify", false, "skip byte verification")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.StringVar(&refPath, "ref", "", "verify against this copy of the memory file instead of --mem (same size and content)")
	f.BoolVar(&touchTimes, "touch-times", false, "report how long each page's first access took (JSON touches)")
	f.BoolVar(&noFaults, "no-faults", false, "with --backend warm: touch every traced page before the clock starts (the replay takes no fault)")
	f.StringVar(&waitReady, "wait-ready", "", "after the restore, wait for this file to exist before resuming the vCPUs (the pager's hot set is installed)")
	run.MarkFlagRequired("mem")
	run.MarkFlagRequired("trace")
	g.AddCommand(run)
	register(g)
}

func waitForFile(ctx context.Context, path string) error {
	t := time.NewTicker(200 * time.Microsecond)
	defer t.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
