package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aquifer-pool/aquifer/baseline"
	"github.com/aquifer-pool/aquifer/handler"
	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/pager"
	"github.com/aquifer-pool/aquifer/snapimage"
	"github.com/aquifer-pool/aquifer/uffd"
	"github.com/aquifer-pool/aquifer/wset"
	"github.com/spf13/cobra"
)

func init() {
	var (
		socket, mem, record string
		image, readyFile    string
		reapWS              string
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
			if (mem == "") == (image == "") {
				return fmt.Errorf("give exactly one of --mem (raw memory file) and --image (Aquifer image)")
			}
			if image != "" {
				if record != "" {
					return fmt.Errorf("--record works with --mem only")
				}
				return runHandleImage(cmd, socket, image, readyFile, workers, acceptTimeout)
			}
			if reapWS != "" && (mem == "" || record != "") {
				return fmt.Errorf("--reap-ws needs --mem and cannot be combined with --record")
			}
			return runHandle(cmd, socket, mem, record, reapWS, workers, acceptTimeout)
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "Unix socket path to listen on (Firecracker's backend_path)")
	cmd.Flags().StringVar(&mem, "mem", "", "raw Firecracker snapshot memory file")
	cmd.Flags().StringVar(&record, "record", "", "write the recorded working set to this file when the VM exits")
	cmd.Flags().IntVar(&workers, "workers", 2, "fault-serving threads")
	cmd.Flags().DurationVar(&acceptTimeout, "accept-timeout", 0, "give up if Firecracker has not connected after this long (0: wait forever)")
	cmd.Flags().StringVar(&image, "image", "", "serve an Aquifer image (aquifer convert) from local disk with the pager instead of a raw memory file")
	cmd.Flags().StringVar(&readyFile, "ready-file", "", "with --image: create this file once the hot set is installed (resume the VM after it appears)")
	cmd.Flags().StringVar(&reapWS, "reap-ws", "", "REAP baseline: working-set file (aquifer baseline reap) installed whole at the first fault")
	cmd.MarkFlagRequired("socket")
	register(cmd)
}

func runHandle(cmd *cobra.Command, socket, mem, record, reapWS string, workers int, acceptTimeout time.Duration) error {
	var src handler.Source
	var reap *baseline.REAPSource
	if reapWS != "" {
		// REAP: the working-set file is fetched before the load.
		r, err := baseline.OpenREAP(mem, reapWS)
		if err != nil {
			return err
		}
		defer r.Close()
		src, reap = r, r
	} else {
		m, err := handler.OpenMemFile(mem)
		if err != nil {
			return err
		}
		defer m.Close()
		src = m
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	vm, err := acceptVM(ctx, socket, src.Size(), acceptTimeout)
	if err != nil {
		return err
	}
	defer vm.close()
	u, res, pidfd := vm.u, vm.res, vm.pidfd
	opts := handler.Options{Workers: workers, Record: record != "", HangupFD: vm.hangupFD, NoHangup: vm.hangupFD < 0}
	h, err := handler.New(u, res.Regions, src, opts)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	defer h.Close()
	if reap != nil {
		reap.Attach(h)
	}
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

// acceptedVM is a VM whose handshake completed.
type acceptedVM struct {
	u        *uffd.FD
	res      *handshake.Result
	pidfd    int
	hangupFD int
	closers  []func()
}

func (v *acceptedVM) close() {
	for i := len(v.closers) - 1; i >= 0; i-- {
		v.closers[i]()
	}
}

// acceptVM listens on socket, accepts Firecracker's single connection and
// completes the handshake against a memory of memSize bytes.
func acceptVM(ctx context.Context, socket string, memSize int64, acceptTimeout time.Duration) (*acceptedVM, error) {
	l, err := handshake.Listen(socket)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	slog.Info("waiting for Firecracker", "socket", socket, "mem_bytes", memSize)
	actx := ctx
	if acceptTimeout > 0 {
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, acceptTimeout)
		defer cancel()
	}
	conn, err := l.Accept(actx)
	if err != nil {
		return nil, err
	}
	l.Close() // Firecracker connects exactly once.
	v := &acceptedVM{pidfd: -1, hangupFD: -1}
	v.closers = append(v.closers, func() { conn.Close() })
	res, err := handshake.Receive(conn, memSize, 10*time.Second)
	if err != nil {
		v.close()
		return nil, &exitError{code: 2, err: err}
	}
	v.res = res
	v.u = uffd.FromFd(res.UFFD)
	v.closers = append(v.closers, func() { v.u.Close() })
	slog.Info("handshake", "peer_pid", res.Peer.Pid, "dialect", res.Dialect.String(), "regions", len(res.Regions))
	w, err := handshake.WatchExit(conn, res)
	if err != nil {
		slog.Warn("cannot watch the VM process; serving until ESRCH or a signal", "err", err)
	}
	v.pidfd, v.hangupFD = w.PidFD, w.HangupFD
	v.closers = append(v.closers, w.Close)
	return v, nil
}

func runHandleImage(cmd *cobra.Command, socket, image, readyFile string, workers int, acceptTimeout time.Duration) error {
	img, f, err := snapimage.Open(image)
	if err != nil {
		return err
	}
	defer f.Close()
	hot, cold := pager.LocalSegments(img, f)
	s, err := pager.New(img, hot, cold, pager.Options{Workers: workers})
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	vm, err := acceptVM(ctx, socket, int64(img.MemSize()), acceptTimeout)
	if err != nil {
		return err
	}
	defer vm.close()
	if readyFile != "" {
		go func() {
			<-s.Ready()
			if s.ReadyErr() == nil {
				os.WriteFile(readyFile, []byte("ready\n"), 0o600)
			}
		}()
	}
	rep, err := s.Serve(ctx, vm.u, vm.res.Regions, vm.pidfd, vm.hangupFD)
	if rep != nil {
		fmt.Fprintf(cmd.OutOrStdout(), "aquifer handle: %s; pre-installed %d hot pages in %v, cold extents %d demand + %d prefetch\n",
			rep.Handler, rep.PreinstallPages, rep.Preinstall.Round(time.Microsecond), rep.ColdDemandExtents, rep.ColdPrefetchExtent)
	}
	if err == nil {
		err = s.ReadyErr()
	}
	return err
}
