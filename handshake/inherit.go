package handshake

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// A listening socket can move to another process (a pager's planned
// upgrade): Files gives duplicates of the socket and of its lock to send
// over SCM_RIGHTS, Inherit wraps what was received, and Release lets the
// old process go without removing the path its successor now serves.
// Connections waiting in the backlog stay there and are accepted by
// whichever process accepts next.

// Files returns duplicates of the listening socket and of its lock file
// (nil when the directory's lock covers the socket).
func (l *Listener) Files() (sock, lock *os.File, err error) {
	sock, err = l.UnixListener.File()
	if err != nil {
		return nil, nil, fmt.Errorf("duplicating listener %s: %w", l.path, err)
	}
	if l.lock != nil {
		fd, err := dupCloexec(int(l.lock.Fd()))
		if err != nil {
			sock.Close()
			return nil, nil, fmt.Errorf("duplicating the lock of %s: %w", l.path, err)
		}
		lock = os.NewFile(uintptr(fd), l.lock.Name())
	}
	return sock, lock, nil
}

// Inherit wraps a listening socket on path, and its lock (nil when a
// directory lock covers it), received from the process that listened
// there. It takes ownership of both files.
func Inherit(path string, sock, lock *os.File) (*Listener, error) {
	nl, err := net.FileListener(sock)
	sock.Close()
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		return nil, fmt.Errorf("inheriting listener %s: %w", path, err)
	}
	ul, ok := nl.(*net.UnixListener)
	if !ok {
		nl.Close()
		if lock != nil {
			lock.Close()
		}
		return nil, fmt.Errorf("inherited listener for %s is not a Unix socket", path)
	}
	ul.SetUnlinkOnClose(false)
	return &Listener{UnixListener: ul, path: path, lock: lock}, nil
}

// Release stops listening in this process but leaves the socket file and
// the lock to the process that now holds duplicates of them: afterwards
// Close does nothing more.
func (l *Listener) Release() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if l.lock != nil {
			l.lock.Close()
		}
	})
	return err
}

func dupCloexec(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) }
