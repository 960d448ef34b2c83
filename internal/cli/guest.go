package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/api"
	"github.com/aquifer-pool/aquifer/api/client"
	"github.com/aquifer-pool/aquifer/guest"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/wset"
	"github.com/spf13/cobra"
)

func init() {
	g := &cobra.Command{
		Use:   "guest",
		Short: "Firecracker-faithful guest emulator: restore a VM and replay a page-access trace",
	}
	var f guestRunFlags
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
as Firecracker's balloon does; it must read as zeros afterwards.

--page-size 2MiB restores a hugetlbfs-backed guest as Firecracker does for
huge_pages "2M": guest memory is MAP_HUGETLB|MAP_HUGE_2MB, the handshake
carries page_size 2097152 (Firecracker 1.7 and later), and only the uffd
backend exists (Firecracker's File backend refuses such snapshots). A 4 KiB
trace replays on it at 4 KiB precision, and every 2 MiB page it touched is
compared whole after the replay. On a 2 MiB guest the kernel discards balloon
memory only in whole aligned huge pages, as with Firecracker.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runGuest(cmd, &f) },
	}
	f.register(run)
	run.MarkFlagRequired("mem")
	run.MarkFlagRequired("trace")
	g.AddCommand(run)
	register(g)
}

// guestRunFlags are the flags of aquifer guest run.
type guestRunFlags struct {
	mem, tracePath, backend, socket, fcVersion, gapStart, balloon string
	waitReady, faasnapPlan, pageSize                              string
	pagerAPI, vmID, snapshot                                      string
	earlyResume                                                   bool
	vcpus                                                         int
	think                                                         float64
	dropCache, noVerify, asJSON                                   bool
	refPath                                                       string
	touchTimes, noFaults, holdVerify                              bool
}

func (g *guestRunFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&g.mem, "mem", "", "snapshot memory file (mapped by the File backend; reference for verification)")
	f.StringVar(&g.tracePath, "trace", "", "working-set / access trace file to replay")
	f.StringVar(&g.refPath, "ref", "", "verify against this copy of the memory file instead of --mem (same size and content)")
	f.BoolVar(&g.touchTimes, "touch-times", false, "report how long each page's first access took (JSON touches)")
	f.BoolVar(&g.noFaults, "no-faults", false, "with --backend warm: touch every traced page before the clock starts (the replay takes no fault)")
	f.StringVar(&g.backend, "backend", "uffd", "memory backend: uffd, file, or faasnap (the FaaSnap baseline's mapping; needs --faasnap-plan)")
	f.StringVar(&g.pagerAPI, "pager-api", "", "restore through the pager daemon at this control socket (aquifer serve; default with --vm and --snapshot: $AQUIFER_API, else /run/aquifer/api.sock)")
	f.StringVar(&g.vmID, "vm", "", "VM id to prepare on the pager daemon (restores through it)")
	f.BoolVar(&g.earlyResume, "early-resume", false, "with --pager-api: resume before the whole hot set is installed (it streams in)")
	f.StringVar(&g.snapshot, "snapshot", "", "published snapshot to restore through the pager daemon")
	f.StringVar(&g.faasnapPlan, "faasnap-plan", "", "FaaSnap mapping plan (aquifer baseline faasnap)")
	f.StringVar(&g.socket, "socket", "", "handler socket (uffd backend)")
	f.StringVar(&g.fcVersion, "fc-version", "1.12", "Firecracker version whose handshake dialect to speak (1.1–1.6, 1.7–1.11, 1.12+)")
	f.StringVar(&g.gapStart, "gap-start", "", "start of the MMIO gap (default 3GiB; smaller values give small VMs two regions)")
	f.StringVar(&g.balloon, "balloon", "", "OFFSET:LEN of guest memory to discard at the trace's midpoint")
	f.IntVar(&g.vcpus, "vcpus", 2, "vCPU threads")
	f.Float64Var(&g.think, "think-scale", 0, "multiply the trace's think times (0: none)")
	f.BoolVar(&g.dropCache, "drop-cache", false, "drop the memory file's page cache first (File backend cold restore)")
	f.BoolVar(&g.noVerify, "no-verify", false, "skip byte verification")
	f.BoolVar(&g.asJSON, "json", false, "print the report as JSON")
	f.StringVar(&g.pageSize, "page-size", "", "guest page size: 4KiB, or 2MiB for a hugetlbfs-backed guest (Firecracker's huge_pages \"2M\"; uffd backend only; vm.nr_hugepages must cover the pages it touches); default the trace's")
	f.BoolVar(&g.holdVerify, "hold-verify", false, "after the measured run, print \""+guest.MeasuredLine+"\" on standard error and wait for standard input to close (at most "+maxHoldVerify.String()+") before verifying the whole memory: a benchmark of concurrent VMs keeps one VM's verification off the others' clocks")
	f.StringVar(&g.waitReady, "wait-ready", "", "after the restore, wait for this file to exist before resuming the vCPUs (the pager's hot set is installed)")
}

// runGuest is aquifer guest run: the flags become a guest.Config (through
// the pager daemon with --pager-api), the guest runs until the trace is
// replayed or a signal stops it, and its report is printed.
func runGuest(cmd *cobra.Command, g *guestRunFlags) error {
	cfg, err := g.config()
	if err != nil {
		return err
	}
	if g.pagerAPI == "" && (g.vmID != "" || g.snapshot != "") {
		// --vm and --snapshot restore through a daemon: the one the
		// environment names (AQUIFER_API) or the default socket.
		g.pagerAPI = client.Socket("")
	}
	if g.pagerAPI != "" {
		if err := g.prepareOnPager(&cfg); err != nil {
			return err
		}
	}
	if g.waitReady != "" {
		cfg.Resumed = func(ctx context.Context) error { return waitForFile(ctx, g.waitReady) }
	}
	if cfg.Backend == guest.BackendUffd && cfg.Socket == "" && cfg.Prepare == nil {
		return fmt.Errorf("--backend uffd needs --socket")
	}
	if g.holdVerify {
		cfg.Measured = func(ctx context.Context) { holdVerify(ctx, cmd.ErrOrStderr(), cmd.InOrStdin()) }
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, runErr := guest.Run(ctx, cfg)
	if rep != nil {
		printGuestReport(cmd.OutOrStdout(), rep, g.asJSON)
	}
	return runErr
}

// config reads the trace and parses the flags into a guest.Config.
func (g *guestRunFlags) config() (guest.Config, error) {
	tr, err := wset.ReadFile(g.tracePath)
	if err != nil {
		return guest.Config{}, err
	}
	cfg := guest.Config{MemPath: g.mem, Backend: guest.Backend(g.backend), Socket: g.socket, VCPUs: g.vcpus,
		Trace: tr, ThinkScale: g.think, DropCache: g.dropCache, NoVerify: g.noVerify,
		RefPath: g.refPath, TouchTimes: g.touchTimes, NoFaults: g.noFaults}
	if cfg.Dialect, err = handshake.ParseDialect(g.fcVersion); err != nil {
		return cfg, err
	}
	if g.pageSize != "" {
		ps, err := parsePageSize("page-size", g.pageSize)
		if err != nil {
			return cfg, err
		}
		cfg.PageSize = uint64(ps)
	}
	if g.gapStart != "" {
		if cfg.GapStart, err = parseSize(g.gapStart); err != nil {
			return cfg, err
		}
	}
	if g.balloon != "" {
		if cfg.Balloon, err = parseBalloon(g.balloon); err != nil {
			return cfg, err
		}
	}
	if g.faasnapPlan != "" {
		if cfg.FaaSnap, err = guest.ReadFaaSnapPlan(g.faasnapPlan); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// parseBalloon parses --balloon OFFSET:LEN.
func parseBalloon(s string) (*guest.Balloon, error) {
	off, ln, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("--balloon wants OFFSET:LEN, got %q", s)
	}
	var b guest.Balloon
	var err error
	if b.Offset, err = parseSize(off); err != nil {
		return nil, err
	}
	if b.Len, err = parseSize(ln); err != nil {
		return nil, err
	}
	return &b, nil
}

// prepareOnPager acts as the orchestrator: the restore it sets up first
// prepares the VM on the pager daemon (PUT /v1/vms/ID, on the restore's
// clock: guest.Config.Prepare), loads through the socket the daemon names
// and resumes once the daemon says the VM is ready.
func (g *guestRunFlags) prepareOnPager(cfg *guest.Config) error {
	if g.vmID == "" || g.snapshot == "" {
		return fmt.Errorf("a restore through the pager daemon needs both --vm ID and --snapshot NAME")
	}
	pc := client.New(g.pagerAPI, client.Options{})
	// An orchestrator is a long-lived process with its connection to the
	// node's daemon open: open this one before the restore's clock starts
	// (a fresh process's first request costs 0.5-1.5 ms more on these VMs).
	// The answer does not matter: a missing daemon is waited for below.
	wctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	pc.Get(wctx, g.vmID)
	cancel()
	// This process is the VMM: its socket admits this pid only.
	req := api.PrepareRequest{Snapshot: g.snapshot, EarlyResume: g.earlyResume, VMMPID: os.Getpid()}
	ready := make(chan error, 1)
	cfg.Prepare = func(ctx context.Context) (string, error) {
		vm, err := pc.Prepare(ctx, g.vmID, req)
		// As an orchestrator would: while no daemon answers (it is
		// restarting), ask again; a PUT the daemon recorded before it went
		// is found again. A daemon that answers 503 (its control plane is
		// down) is not asked again.
		for deadline, retried := time.Now().Add(time.Minute), false; err != nil; {
			var ae *api.Error
			switch {
			case errors.Is(err, api.ErrExists) && retried:
				if vm, err = pc.Get(ctx, g.vmID); err == nil && (vm.Snapshot != g.snapshot || vm.VMMPID != req.VMMPID) {
					err = fmt.Errorf("VM %q: already exists with another snapshot or VMM (DELETE /v1/vms/%s ends it; or give another --vm)", g.vmID, g.vmID)
				}
				continue
			case !errors.As(err, &ae) || ae.Code != api.CodeUnavailable || ae.Status != 0 || time.Now().After(deadline):
				return "", err
			}
			time.Sleep(50 * time.Millisecond)
			vm, err = pc.Prepare(ctx, g.vmID, req)
			retried = true
		}
		// Ask for the VM's readiness now, beside the VMM's load (the
		// long poll answers once the VMM has connected and the hot set
		// is in), as an orchestrator that resumes at once would: the
		// request's round trip is then off the critical path.
		go func() {
			_, err := pc.WaitReady(ctx, g.vmID, time.Minute)
			ready <- err
		}()
		return vm.Socket, nil
	}
	cfg.Resumed = func(ctx context.Context) error {
		select {
		case err := <-ready:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// printGuestReport prints a guest run's report, as indented JSON or as one
// line.
func printGuestReport(w io.Writer, rep *guest.Report, asJSON bool) {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
		return
	}
	huge := ""
	if rep.PageSize == 2<<20 {
		huge = fmt.Sprintf(", 2 MiB pages: %d verified whole", rep.WholePagesVerified)
	}
	fmt.Fprintf(w,
		"guest: backend %s dialect %s regions %d vcpus %d: %d accesses over %d pages, restore %v, first touch %v, end-to-end %v, verified %d pages, mismatches %d%s\n",
		rep.Backend, rep.Dialect, rep.Regions, rep.VCPUs, rep.Accesses, rep.Pages,
		rep.Restore, rep.FirstTouch, rep.EndToEnd, rep.Verified, rep.Mismatches, huge)
}

// maxHoldVerify bounds the wait of --hold-verify.
const maxHoldVerify = 2 * time.Minute

// holdVerify is --hold-verify: says the measured run is over, then waits
// until in is closed (or reaches its end), ctx ends or maxHoldVerify
// passed.
func holdVerify(ctx context.Context, say io.Writer, in io.Reader) {
	fmt.Fprintln(say, guest.MeasuredLine)
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, in)
		close(done)
	}()
	t := time.NewTimer(maxHoldVerify)
	defer t.Stop()
	select {
	case <-done:
	case <-ctx.Done():
	case <-t.C:
		fmt.Fprintf(say, "guest: standard input still open after %v: verifying now\n", maxHoldVerify)
	}
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
