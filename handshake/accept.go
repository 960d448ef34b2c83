package handshake

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// AcceptOptions say which VMM a handler waits for and how long.
type AcceptOptions struct {
	// MemSize bounds the regions (the memory file's size; < 0: unchecked).
	MemSize int64
	// UID is the uid the VMM runs as (Firecracker's uid under the jailer);
	// -1 means this process's own uid. Root is not admitted unless UID is
	// 0: a handler serves exactly the VMM it was started for.
	UID int
	// PID, if > 0, is the VMM's pid: a peer with another pid is refused.
	PID int
	// ReceiveTimeout bounds the wait for the region list once a permitted
	// peer connected (default 10s).
	ReceiveTimeout time.Duration
	// Logger receives refused peers (default slog.Default()).
	Logger *slog.Logger
}

// VM is a completed handshake: the connection (kept open for dialects that
// keep it), what the VMM sent, and its exit watchers.
type VM struct {
	Conn *net.UnixConn
	*Result
	Watch *ExitWatch
}

// Close releases the connection, the watchers and the userfaultfd unless
// the caller took it (set UFFD to -1 after taking ownership).
func (v *VM) Close() {
	if v.Watch != nil {
		v.Watch.Close()
	}
	if v.Conn != nil {
		v.Conn.Close()
	}
	if v.Result != nil && v.UFFD >= 0 {
		unix.Close(v.UFFD)
		v.UFFD = -1
	}
}

// Accept is the handler side of the whole Firecracker accept sequence on
// l: wait (until ctx ends) for a connection from the expected VMM, check
// its credentials (SO_PEERCRED) before reading anything from it, receive
// the region list and the userfaultfd with a deadline, validate the regions
// and open the exit watchers (pidfd; the socket itself for 1.12+).
//
// A peer with other credentials is refused — its connection closed, the
// attempt logged and counted in refused — and the socket keeps listening,
// so the real VMM can still connect. A handshake from the expected peer
// that is malformed is an error: Firecracker connects exactly once.
// Accept does not close l.
func Accept(ctx context.Context, l *Listener, o AcceptOptions, refused func(Peer)) (*VM, error) {
	if o.UID < 0 {
		o.UID = os.Getuid()
	}
	if o.ReceiveTimeout <= 0 {
		o.ReceiveTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	for {
		conn, err := l.Accept(ctx)
		if err != nil {
			return nil, err
		}
		peer, err := PeerOf(conn)
		if err != nil {
			conn.Close()
			return nil, err
		}
		if why := o.mismatch(peer); why != "" {
			o.Logger.Warn("refused a connection to a VM's UFFD socket", "socket", l.Path(), "peer_pid", peer.Pid, "peer_uid", peer.Uid, "why", why)
			conn.Close()
			if refused != nil {
				refused(peer)
			}
			continue
		}
		res, err := Receive(conn, o.MemSize, o.ReceiveTimeout)
		if err != nil {
			conn.Close()
			return nil, err
		}
		vm := &VM{Conn: conn, Result: res}
		w, werr := WatchExit(conn, res)
		vm.Watch = w
		if werr != nil {
			o.Logger.Warn("cannot watch the VM process; serving until ESRCH or the socket closes", "err", werr)
		}
		return vm, nil
	}
}

func (o AcceptOptions) mismatch(p Peer) string {
	if int(p.Uid) != o.UID {
		return fmt.Sprintf("uid %d, expected %d", p.Uid, o.UID)
	}
	if o.PID > 0 && p.Pid != o.PID {
		return fmt.Sprintf("pid %d, expected %d", p.Pid, o.PID)
	}
	return ""
}
