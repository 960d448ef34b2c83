package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/handler"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/wset"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func init() {
	var (
		socket, mem, record string
		workers             int
		acceptTimeout       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "handle --socket PATH --mem FILE",
		Short: "Serve one Firecracker VM's page faults on demand from a raw memory file (UFFD backend)",
		Long: `handle listens on --socket (give that path to Firecracker as
mem_backend {"backend_type":"Uffd","backend_path":PATH}), accepts Firecracker's
single connection, receives the userfaultfd and the region list (any dialect
from Firecracker 1.1 on) and serves every page fault from --mem, the snapshot
memory file. Balloon (REMOVE) ranges are answered with zero pages from then on.
It exits 0 when the VM process exits and prints one summary line.

With --record FILE it also records every first touch (page, read/write, time
since the first fault) in fault order: a working set for REAP-style prefetch
and for Aquifer's hot set.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runHandle(cmd, socket, mem, record, workers, acceptTimeout)
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "Unix socket path to listen on (Firecracker's backend_path)")
	cmd.Flags().StringVar(&mem, "mem", "", "raw Firecracker snapshot memory file")
	cmd.Flags().StringVar(&record, "record", "", "write the recorded working set to this file when the VM exits")
	cmd.Flags().IntVar(&workers, "workers", 2, "fault-serving threads")
	cmd.Flags().DurationVar(&acceptTimeout, "accept-timeout", 0, "give up if Firecracker has not connected after this long (0: wait forever)")
	cmd.MarkFlagRequired("socket")
	cmd.MarkFlagRequired("mem")
	register(cmd)
}

func runHandle(cmd *cobra.Command, socket, mem, record string, workers int, acceptTimeout time.Duration) error {
	src, err := handler.OpenMemFile(mem)
	if err != nil {
		return err
	}
	defer src.Close()
	l, err := handshake.Listen(socket)
	if err != nil {
		return err
	}
	defer l.Close()
	slog.Info("waiting for Firecracker", "socket", socket, "mem", mem, "mem_bytes", src.Size())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	actx := ctx
	if acceptTimeout > 0 {
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, acceptTimeout)
		defer cancel()
	}
	conn, err := l.Accept(actx)
	if err != nil {
		return err
	}
	defer conn.Close()
	l.Close() // Firecracker connects exactly once.
	res, err := handshake.Receive(conn, src.Size(), 10*time.Second)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	u := uffd.FromFd(res.UFFD)
	defer u.Close()
	slog.Info("handshake", "peer_pid", res.Peer.Pid, "dialect", res.Dialect.String(), "regions", len(res.Regions))
	pidfd, err := handshake.PidFD(res.Peer.Pid)
	if err != nil {
		slog.Warn("cannot watch the VM process; serving until ESRCH or a signal", "err", err)
		pidfd = -1
	} else {
		defer unix.Close(pidfd)
	}
	opts := handler.Options{Workers: workers, Record: record != "", NoHangup: true}
	if res.Dialect.KeepsSocketOpen() {
		// Firecracker 1.12+ holds the socket open until it exits.
		if f, err := conn.File(); err == nil {
			defer f.Close()
			opts.HangupFD, opts.NoHangup = int(f.Fd()), false
		}
	}
	h, err := handler.New(u, res.Regions, src, opts)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	defer h.Close()
	stats, err := h.Serve(ctx, pidfd)
	fmt.Fprintf(cmd.OutOrStdout(), "aquifer handle: %s\n", stats)
	if err != nil {
		return err
	}
	if record != "" {
		tr := h.Trace()
		if err := wset.WriteFile(record, tr); err != nil {
			return fmt.Errorf("writing working set: %w", err)
		}
		slog.Info("recorded working set", "file", record, "pages", len(tr.Accesses))
	}
	return nil
}
