package vmmproc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Errors of recovery. They are wrapped with detail.
var (
	// ErrGone: the VMM has exited (or its pid now names another process,
	// or the record is from another boot).
	ErrGone = errors.New("the VMM process is gone")
	// ErrNotHeld: the VMM no longer holds the userfaultfd.
	ErrNotHeld = errors.New("the VMM holds no such userfaultfd")
	// ErrAmbiguous: several distinct userfaultfds match and nothing tells
	// them apart.
	ErrAmbiguous = errors.New("several userfaultfds match")
	// ErrPermission: this process may not take the VMM's descriptors.
	ErrPermission = errors.New("not permitted to take the VMM's descriptors")
)

// Identity names one process for the life of the machine.
type Identity struct {
	PID int `json:"pid"`
	// StartTime is the process's start time in clock ticks after boot
	// (field 22 of /proc/PID/stat).
	StartTime uint64 `json:"start_time"`
	// BootID is /proc/sys/kernel/random/boot_id when it was identified.
	BootID string `json:"boot_id"`
}

func (id Identity) String() string {
	return fmt.Sprintf("pid %d (started at tick %d)", id.PID, id.StartTime)
}

// BootID returns this boot's id.
func BootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("reading the boot id: %w", err)
	}
	return string(bytes.TrimSpace(b)), nil
}

// StartTime returns the start time of process pid (clock ticks after boot).
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return 0, fmt.Errorf("pid %d: %w", pid, ErrGone)
		}
		return 0, err
	}
	return parseStartTime(b)
}

// parseStartTime reads field 22 of a /proc/PID/stat line. The command
// name (field 2) is in parentheses and may itself hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStartTime(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("malformed /proc/PID/stat: %d fields after the command name", len(f))
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed /proc/PID/stat start time %q", f[19])
	}
	return v, nil
}

// Process is a live process held by a pidfd.
type Process struct {
	Identity
	// PidFD is readable (POLLIN) once the process exited. Owned by the
	// Process: Close closes it.
	PidFD int
}

// Identify returns the identity of the process pidfd (opened on pid)
// refers to. The start time is read after the pidfd was opened and
// checked against it: if the process exited meanwhile (its pid may then be
// reused), ErrGone.
func Identify(pid, pidfd int) (Identity, error) {
	boot, err := BootID()
	if err != nil {
		return Identity{}, err
	}
	st, err := StartTime(pid)
	if err != nil {
		return Identity{}, err
	}
	if exited(pidfd) {
		return Identity{}, fmt.Errorf("pid %d exited: %w", pid, ErrGone)
	}
	return Identity{PID: pid, StartTime: st, BootID: boot}, nil
}

// Open opens the process id names. A process that exited, a pid now used
// by another process and a record of another boot are ErrGone.
func Open(id Identity) (*Process, error) {
	if id.PID <= 0 {
		return nil, fmt.Errorf("pid %d is not a process", id.PID)
	}
	boot, err := BootID()
	if err != nil {
		return nil, err
	}
	if boot != id.BootID {
		return nil, fmt.Errorf("%v was recorded during another boot (%s; now %s): %w", id, id.BootID, boot, ErrGone)
	}
	fd, err := unix.PidfdOpen(id.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("%v: %w", id, ErrGone)
		}
		return nil, fmt.Errorf("pidfd_open(%d): %w", id.PID, err)
	}
	unix.CloseOnExec(fd)
	got, err := Identify(id.PID, fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if got.StartTime != id.StartTime {
		unix.Close(fd)
		return nil, fmt.Errorf("pid %d now names another process (started at tick %d, the VMM at %d): %w", id.PID, got.StartTime, id.StartTime, ErrGone)
	}
	return &Process{Identity: id, PidFD: fd}, nil
}

// FromPidFD wraps a pidfd received from elsewhere (a handoff) after
// checking it still refers to id.
func FromPidFD(id Identity, pidfd int) (*Process, error) {
	got, err := Identify(id.PID, pidfd)
	if err != nil {
		return nil, err
	}
	if got.StartTime != id.StartTime || got.BootID != id.BootID {
		return nil, fmt.Errorf("the pidfd for %v names another process: %w", id, ErrGone)
	}
	return &Process{Identity: id, PidFD: pidfd}, nil
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool { return exited(p.PidFD) }

func exited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0
	}
}

// Close releases the pidfd.
func (p *Process) Close() error {
	if p == nil || p.PidFD < 0 {
		return nil
	}
	err := unix.Close(p.PidFD)
	p.PidFD = -1
	return err
}

// FileID identifies an open file by its inode. Every userfaultfd has an
// inode of its own on current kernels (anon_inode_create_getfd); where
// they share one, kcmp tells them apart.
type FileID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// FileIDOf returns the identity of the file fd refers to.
func FileIDOf(fd int) (FileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return FileID{}, fmt.Errorf("fstat: %w", err)
	}
	return FileID{Dev: st.Dev, Ino: st.Ino}, nil
}

// userfaultfdLink is what /proc/PID/fd/N reads for a userfaultfd.
const userfaultfdLink = "anon_inode:[userfaultfd]"

// UFFDs returns the descriptor numbers of the process's userfaultfds.
func (p *Process) UFFDs() ([]int, error) {
	dir := fmt.Sprintf("/proc/%d/fd", p.PID)
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%v: %w", p.Identity, ErrGone)
		}
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("reading %s: %w (%w)", dir, ErrPermission, err)
		}
		return nil, err
	}
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || l != userfaultfdLink {
			continue // closed meanwhile, or another file
		}
		out = append(out, n)
	}
	return out, nil
}

// TakeUFFD copies into this process the VMM's userfaultfd whose identity
// is want (what FileIDOf said of the descriptor the handshake delivered).
// The returned descriptor (close-on-exec) shares the VMM's open file: its
// flags (O_NONBLOCK), registrations and pending events.
func (p *Process) TakeUFFD(want FileID) (int, error) {
	nums, err := p.UFFDs()
	if err != nil {
		return -1, err
	}
	var got []int
	release := func(keep int) {
		for _, fd := range got {
			if fd != keep {
				unix.Close(fd)
			}
		}
	}
	for _, n := range nums {
		fd, err := unix.PidfdGetfd(p.PidFD, n, 0)
		switch {
		case err == nil:
		case errors.Is(err, unix.EBADF):
			continue // closed since the listing
		case errors.Is(err, unix.ESRCH):
			release(-1)
			return -1, fmt.Errorf("%v: %w", p.Identity, ErrGone)
		case errors.Is(err, unix.EPERM):
			release(-1)
			return -1, fmt.Errorf("pidfd_getfd on %v: %w: it needs PTRACE_MODE_ATTACH over the VMM — run the pager as the VMM's uid (with kernel.yama.ptrace_scope 0) or with CAP_SYS_PTRACE (root; required when Firecracker runs under the jailer as another uid)", p.Identity, ErrPermission)
		default:
			release(-1)
			return -1, fmt.Errorf("pidfd_getfd(%v, fd %d): %w", p.Identity, n, err)
		}
		id, err := FileIDOf(fd)
		if err != nil || id != want {
			unix.Close(fd)
			continue
		}
		got = append(got, fd)
	}
	switch len(got) {
	case 0:
		return -1, fmt.Errorf("%v holds %d userfaultfds, none is inode %d: %w", p.Identity, len(nums), want.Ino, ErrNotHeld)
	case 1:
		return got[0], nil
	}
	// Several descriptors with the inode: duplicates of one file (fine),
	// or distinct files of a kernel that shares one inode among them.
	for _, fd := range got[1:] {
		same, err := sameFile(got[0], fd)
		if err != nil || !same {
			release(-1)
			if err != nil {
				return -1, fmt.Errorf("%v holds %d userfaultfds with inode %d and kcmp cannot compare them (%v): %w", p.Identity, len(got), want.Ino, err, ErrAmbiguous)
			}
			return -1, fmt.Errorf("%v holds distinct userfaultfds with inode %d (this kernel shares one inode among them): %w", p.Identity, want.Ino, ErrAmbiguous)
		}
	}
	release(got[0])
	return got[0], nil
}

// sameFile reports whether two descriptors of this process refer to one
// open file (kcmp KCMP_FILE).
func sameFile(a, b int) (bool, error) {
	const kcmpFile = 0
	pid := os.Getpid()
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(pid), kcmpFile, uintptr(a), uintptr(b), 0)
	if errno != 0 {
		return false, errno
	}
	return r == 0, nil
}

// Pending reads a userfaultfd's queue from /proc/self/fdinfo: unread is
// the number of faults not yet read from it, unanswered the number read and
// not yet woken — threads asleep on an answer that a dead handler will
// never give (the kernel's "total" less its "pending").
func Pending(fd int) (unread, unanswered uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return 0, 0, err
	}
	var pending, total uint64
	var seen int
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || (k != "pending" && k != "total") {
			continue
		}
		n, perr := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if perr != nil {
			return 0, 0, fmt.Errorf("fdinfo of fd %d: %q", fd, l)
		}
		if k == "pending" {
			pending = n
		} else {
			total = n
		}
		seen++
	}
	if seen != 2 || total < pending {
		return 0, 0, fmt.Errorf("fd %d is not a userfaultfd (no pending/total in its fdinfo)", fd)
	}
	return pending, total - pending, nil
}
