package handshake

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// MaxMessage bounds the region JSON a handler accepts (Firecracker sends a
// few hundred bytes; 64 KiB is generous).
const MaxMessage = 64 << 10

// Listener is the handler's listening socket.
type Listener struct {
	*net.UnixListener
	path string
	lock *os.File
	once sync.Once
}

// ListenOptions tune Listen.
type ListenOptions struct {
	// DirLocked says the caller holds an exclusive lock on the socket's
	// directory (see LockDir), so any socket file already at path is a
	// stale one of its own and no per-socket lock is taken.
	DirLocked bool
	// Owner, if > 0 and not this process's uid, becomes the socket's owner
	// before it appears at path (mode 0600: only that uid and root can
	// connect), so that a VMM running as another uid can reach it.
	Owner int
	// Packet makes a SOCK_SEQPACKET socket (message boundaries kept)
	// instead of a stream.
	Packet bool
}

// Listen creates a Unix stream socket at path, mode 0600. Only one process
// listens on a path: an exclusive lock on path+".lock" (held while
// listening) tells a live listener from a stale socket file left by a dead
// one, which is replaced (a regular file never is). Liveness is never
// checked by connecting: a connection to a VM's socket is taken by its
// handler for the VMM.
func Listen(path string) (*Listener, error) { return ListenWith(path, ListenOptions{}) }

// ListenWith is Listen with options.
func ListenWith(path string, o ListenOptions) (*Listener, error) {
	var lock *os.File
	if !o.DirLocked {
		var err error
		if lock, err = lockFile(path+".lock", "another handler is listening on "+path); err != nil {
			return nil, err
		}
	}
	l, err := listen(path, o)
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		return nil, err
	}
	return &Listener{UnixListener: l, path: path, lock: lock}, nil
}

// LockDir takes an exclusive lock on dir (creating it, mode 0700): the
// holder owns every socket in it. The lock lives until the returned file is
// closed or the process exits.
func LockDir(dir, what string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return lockFile(filepath.Join(dir, ".lock"), what)
}

// lockFile takes a non-blocking exclusive flock on path, recording this
// process's pid in it.
func lockFile(path, busy string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s (pid %s holds %s)", busy, bytes.TrimSpace(b[:n]), path)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(fmt.Sprintf("%d\n", os.Getpid())), 0)
	return f, nil
}

func listen(path string, o ListenOptions) (*net.UnixListener, error) {
	owner, network := o.Owner, "unix"
	if o.Packet {
		network = "unixpacket"
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
		}
		os.Remove(path) // stale: its listener would hold the lock
	}
	// Bind and listen under a temporary name, then rename into place: the
	// socket appears only once it accepts connections (Firecracker
	// connects exactly once, and a caller waiting for the path to exist
	// must never see ECONNREFUSED).
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%d.%s", os.Getpid(), filepath.Base(path)))
	if len(tmp) > 107 {
		tmp = path // no room for a temporary name: bind in place
	}
	os.Remove(tmp)
	old := unix.Umask(0o177)
	l, err := net.ListenUnix(network, &net.UnixAddr{Name: tmp, Net: network})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("making %s private (mode 0600): %w", path, err)
	}
	if owner > 0 && owner != os.Getuid() {
		if err := os.Lchown(tmp, owner, -1); err != nil {
			l.Close()
			os.Remove(tmp)
			return nil, fmt.Errorf("giving socket %s to uid %d (the VMM's) needs root or CAP_CHOWN: %w", path, owner, err)
		}
	}
	if tmp != path {
		if err := os.Rename(tmp, path); err != nil {
			l.Close()
			os.Remove(tmp)
			return nil, fmt.Errorf("placing socket %s: %w", path, err)
		}
	}
	return l, nil
}

// Path returns the socket path.
func (l *Listener) Path() string { return l.path }

// Close stops listening and removes the socket file (once).
func (l *Listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		os.Remove(l.path)
		if l.lock != nil {
			l.lock.Close() // the lock file stays: removing it would race a newcomer
		}
	})
	return err
}

// Accept waits for Firecracker's connection until ctx is done.
func (l *Listener) Accept(ctx context.Context) (*net.UnixConn, error) {
	if dl, ok := ctx.Deadline(); ok {
		l.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { l.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c, err := l.AcceptUnix()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for Firecracker on %s: %w", l.path, ctx.Err())
		}
		return nil, fmt.Errorf("accepting on %s: %w", l.path, err)
	}
	return c, nil
}

// Peer identifies the process on the other end of the socket.
type Peer struct {
	Pid int
	Uid uint32
	Gid uint32
}

// Result is what a handler learns from the handshake.
type Result struct {
	Regions []Region
	// UFFD is the received userfaultfd (raw fd, owned by the caller).
	UFFD int
	Peer Peer
	// Dialect is inferred from the fields present.
	Dialect Dialect
}

// Receive reads the region JSON and exactly one fd from c. It reads until
// the JSON parses and never waits for EOF. memSize bounds the regions (< 0:
// unchecked). On error every received fd is closed.
func Receive(c *net.UnixConn, memSize int64, timeout time.Duration) (*Result, error) {
	peer, err := PeerOf(c)
	if err != nil {
		return nil, err
	}
	if timeout > 0 {
		c.SetReadDeadline(time.Now().Add(timeout))
		defer c.SetReadDeadline(time.Time{})
	}
	var (
		data []byte
		fds  []int
		buf  = make([]byte, MaxMessage)
		oob  = make([]byte, unix.CmsgSpace(4*4))
	)
	fail := func(err error) (*Result, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, err
	}
	for {
		n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			got, perr := parseRights(oob[:oobn])
			fds = append(fds, got...)
			if perr != nil {
				return fail(perr)
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return fail(fmt.Errorf("control message truncated: the peer sent more than one fd"))
		}
		data = append(data, buf[:n]...)
		if len(data) > MaxMessage {
			return fail(fmt.Errorf("region message exceeds %d bytes", MaxMessage))
		}
		if n > 0 {
			regions, perr := Parse(data, uint64(os.Getpagesize()))
			if perr == nil {
				if len(fds) != 1 {
					return fail(fmt.Errorf("expected exactly one userfaultfd with the region list, got %d", len(fds)))
				}
				if verr := Validate(regions, memSize); verr != nil {
					return fail(verr)
				}
				return &Result{Regions: regions, UFFD: fds[0], Peer: peer, Dialect: dialectOf(data)}, nil
			}
			if !errors.Is(perr, ErrIncomplete) {
				return fail(perr)
			}
		}
		if err != nil {
			if n == 0 && len(data) == 0 && isEOF(err) {
				return fail(fmt.Errorf("peer closed the connection without sending the region list"))
			}
			if isEOF(err) {
				return fail(fmt.Errorf("peer closed the connection mid-message after %d bytes: %w", len(data), ErrIncomplete))
			}
			return fail(fmt.Errorf("reading region list: %w", err))
		}
		if n == 0 {
			return fail(fmt.Errorf("peer closed the connection without sending the region list"))
		}
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET)
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("bad control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, fmt.Errorf("bad SCM_RIGHTS: %w", err)
		}
		for _, fd := range got {
			unix.CloseOnExec(fd)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func dialectOf(data []byte) Dialect {
	switch {
	case containsKey(data, `"page_size"`):
		return DialectV1_12
	case containsKey(data, `"page_size_kib"`):
		return DialectV1_7
	}
	return DialectV1_1
}

func containsKey(b []byte, k string) bool { return bytes.Contains(b, []byte(k)) }

// PeerOf returns the credentials of the process connected to c.
func PeerOf(c *net.UnixConn) (Peer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if cerr != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return Peer{Pid: int(cred.Pid), Uid: cred.Uid, Gid: cred.Gid}, nil
}

// PidFD opens a pidfd for pid; it becomes readable when the process exits.
func PidFD(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	unix.CloseOnExec(fd)
	return fd, nil
}

// Send is the Firecracker side: connect to path and send the region JSON of
// dialect d with uffd in one sendmsg. The connection is returned open; a
// caller emulating Firecracker <= 1.11 closes it at once, >= 1.12 keeps it
// until the VM exits.
func Send(path string, regions []Region, d Dialect, uffd int) (*net.UnixConn, error) {
	body, err := Marshal(regions, d)
	if err != nil {
		return nil, err
	}
	return SendRaw(path, body, unix.UnixRights(uffd))
}

// SendRaw connects and sends arbitrary bytes and control data in one
// sendmsg (tests use it to send malformed handshakes).
func SendRaw(path string, body, oob []byte) (*net.UnixConn, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err // names the path
	}
	n, oobn, err := c.WriteMsgUnix(body, oob, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("sending the handshake: %w", err)
	}
	if n != len(body) || oobn != len(oob) {
		c.Close()
		return nil, fmt.Errorf("short sendmsg (%d/%d bytes, %d/%d control)", n, len(body), oobn, len(oob))
	}
	return c, nil
}

// ExitWatch holds the descriptors that tell a handler its VM is gone: a
// pidfd of the peer (readable when it exits) and, for Firecracker 1.12+
// which keeps the handshake socket open until it exits, that socket. Each
// is -1 when unavailable.
type ExitWatch struct {
	PidFD, HangupFD int
	hup             *os.File
}

// WatchExit opens the exit watchers for a completed handshake on c.
func WatchExit(c *net.UnixConn, r *Result) (*ExitWatch, error) {
	w := &ExitWatch{PidFD: -1, HangupFD: -1}
	var err error
	if fd, perr := PidFD(r.Peer.Pid); perr != nil {
		err = perr
	} else {
		w.PidFD = fd
	}
	if r.Dialect.KeepsSocketOpen() {
		if f, ferr := c.File(); ferr == nil {
			w.hup, w.HangupFD = f, int(f.Fd())
		}
	}
	return w, err
}

// Close releases the watchers.
func (w *ExitWatch) Close() {
	if w.PidFD >= 0 {
		unix.Close(w.PidFD)
		w.PidFD = -1
	}
	if w.hup != nil {
		w.hup.Close()
		w.hup, w.HangupFD = nil, -1
	}
}
