package uffd

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel ABI constants (linux/userfaultfd.h). x/sys/unix only has the
// syscall number, so the rest is spelled out here.
const (
	APIVersion = 0xAA

	ioctlAPI        = 0xc018aa3f
	ioctlRegister   = 0xc020aa00
	ioctlUnregister = 0x8010aa01
	ioctlWake       = 0x8010aa02
	ioctlCopy       = 0xc028aa03
	ioctlZeropage   = 0xc020aa04
	ioctlNew        = 0xaa00 // USERFAULTFD_IOC_NEW on /dev/userfaultfd

	UserModeOnly = 1 // UFFD_USER_MODE_ONLY creation flag

	EventPagefault = 0x12
	EventFork      = 0x13
	EventRemap     = 0x14
	EventRemove    = 0x15
	EventUnmap     = 0x16

	PagefaultFlagWrite = 1
	PagefaultFlagWP    = 2
	PagefaultFlagMinor = 4

	FeaturePagefaultFlagWP = 1 << 0
	FeatureEventFork       = 1 << 1
	FeatureEventRemap      = 1 << 2
	FeatureEventRemove     = 1 << 3
	FeatureMissingHugetlbf = 1 << 4
	FeatureMissingShmem    = 1 << 5
	FeatureEventUnmap      = 1 << 6
	FeatureSigbus          = 1 << 7
	FeatureThreadID        = 1 << 8

	RegisterModeMissing = 1
	RegisterModeWP      = 2
	RegisterModeMinor   = 4

	copyModeDontWake     = 1
	zeropageModeDontWake = 1

	// MsgSize is sizeof(struct uffd_msg).
	MsgSize = 32
)

// Ioctl bits reported by UFFDIO_REGISTER (1 << _UFFDIO_xxx).
const (
	IoctlWake     = 1 << 0x02
	IoctlCopy     = 1 << 0x03
	IoctlZeropage = 1 << 0x04
)

type uffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

type uffdioRange struct {
	Start uint64
	Len   uint64
}

type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

type uffdioCopy struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

type uffdioZeropage struct {
	Range    uffdioRange
	Mode     uint64
	Zeropage int64
}

// Compile-time checks of the struct sizes against the kernel's.
var (
	_ [24 - unsafe.Sizeof(uffdioAPI{})]byte
	_ [32 - unsafe.Sizeof(uffdioRegister{})]byte
	_ [16 - unsafe.Sizeof(uffdioRange{})]byte
	_ [40 - unsafe.Sizeof(uffdioCopy{})]byte
	_ [32 - unsafe.Sizeof(uffdioZeropage{})]byte
)

// FD is a userfaultfd. The zero value is not usable; see New and FromFd.
type FD struct {
	fd int
}

// New creates a userfaultfd with O_CLOEXEC|O_NONBLOCK the way Firecracker
// does: the userfaultfd syscall, falling back to /dev/userfaultfd +
// USERFAULTFD_IOC_NEW when the syscall is refused (EPERM with
// vm.unprivileged_userfaultfd=0 for non-root callers, or ENOSYS).
func New() (*FD, error) { return NewFlags(0) }

// NewDevice creates the userfaultfd through /dev/userfaultfd first, as
// Firecracker >= 1.5 does on kernels >= 6.1, and falls back to the syscall.
func NewDevice() (*FD, error) {
	fd, derr := newFromDevice(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if derr == nil {
		return &FD{fd: fd}, nil
	}
	f, serr := NewFlags(0)
	if serr != nil {
		return nil, fmt.Errorf("/dev/userfaultfd: %v; syscall: %w", derr, serr)
	}
	return f, nil
}

// NewFlags is New with extra creation flags (for example UserModeOnly).
func NewFlags(extra int) (*FD, error) {
	flags := unix.O_CLOEXEC | unix.O_NONBLOCK | extra
	for {
		r, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno == 0 {
			return &FD{fd: int(r)}, nil
		}
		if errno != unix.EPERM && errno != unix.ENOSYS {
			return nil, fmt.Errorf("userfaultfd syscall: %w", errno)
		}
		fd, derr := newFromDevice(flags)
		if derr != nil {
			return nil, fmt.Errorf("userfaultfd syscall: %v; /dev/userfaultfd: %w", errno, derr)
		}
		return &FD{fd: fd}, nil
	}
}

func newFromDevice(flags int) (int, error) {
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(dev)
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), ioctlNew, uintptr(flags))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return -1, errno
		}
		return int(r), nil
	}
}

// FromFd wraps a userfaultfd received from another process (Firecracker
// sends one over SCM_RIGHTS). Ownership of fd passes to the FD.
func FromFd(fd int) *FD { return &FD{fd: fd} }

// Fd returns the raw descriptor. It stays owned by f.
func (f *FD) Fd() int { return f.fd }

// Close closes the descriptor. Further calls fail with EBADF.
func (f *FD) Close() error {
	if f.fd < 0 {
		return nil
	}
	err := unix.Close(f.fd)
	f.fd = -1
	return err
}

func (f *FD) ioctl(req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(f.fd), req, uintptr(arg))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// API performs the UFFDIO_API handshake requesting features and returns the
// features the kernel reports.
func (f *FD) API(features uint64) (uint64, error) {
	a := uffdioAPI{API: APIVersion, Features: features}
	if err := f.ioctl(ioctlAPI, unsafe.Pointer(&a)); err != nil {
		return 0, fmt.Errorf("UFFDIO_API features %#x: %w", features, err)
	}
	return a.Features, nil
}

// Register registers [start, start+length) in the given mode and returns the
// ioctls the kernel allows on the range.
func (f *FD) Register(start, length uintptr, mode uint64) (uint64, error) {
	r := uffdioRegister{Range: uffdioRange{uint64(start), uint64(length)}, Mode: mode}
	if err := f.ioctl(ioctlRegister, unsafe.Pointer(&r)); err != nil {
		return 0, fmt.Errorf("UFFDIO_REGISTER [%#x,+%#x) mode %d: %w", start, length, mode, err)
	}
	return r.Ioctls, nil
}

// Unregister unregisters [start, start+length).
func (f *FD) Unregister(start, length uintptr) error {
	r := uffdioRange{uint64(start), uint64(length)}
	if err := f.ioctl(ioctlUnregister, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("UFFDIO_UNREGISTER [%#x,+%#x): %w", start, length, err)
	}
	return nil
}

// Wake wakes threads waiting on faults in [start, start+length).
func (f *FD) Wake(start, length uintptr) error {
	r := uffdioRange{uint64(start), uint64(length)}
	if err := f.ioctl(ioctlWake, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("UFFDIO_WAKE [%#x,+%#x): %w", start, length, err)
	}
	return nil
}

// Copy atomically installs length bytes from src (an address in this
// process, off the Go heap) at dst (an address in the registered range of
// the faulting process). length may cover a contiguous run of pages. With
// dontWake the faulting threads are not woken; finish the batch with Wake.
//
// It returns the number of bytes copied. On EAGAIN the kernel may have copied
// a prefix; the returned count says how much, and the caller retries the rest
// after draining events. EEXIST means some page in the range was present.
func (f *FD) Copy(dst, src, length uintptr, dontWake bool) (int64, error) {
	c := uffdioCopy{Dst: uint64(dst), Src: uint64(src), Len: uint64(length)}
	if dontWake {
		c.Mode = copyModeDontWake
	}
	for {
		c.Copy = 0
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(f.fd), ioctlCopy, uintptr(unsafe.Pointer(&c)))
		if errno == 0 {
			return c.Copy, nil
		}
		if errno == unix.EINTR && c.Copy <= 0 {
			continue
		}
		n := c.Copy
		if n < 0 {
			n = 0
		}
		return n, &OpError{Op: "UFFDIO_COPY", Addr: dst, Len: length, Err: errno}
	}
}

// ZeroPage maps zero pages over [start, start+length) in the faulting
// process. Not supported on hugetlbfs ranges: copy from a zero buffer there.
func (f *FD) ZeroPage(start, length uintptr, dontWake bool) error {
	_, err := f.ZeroPages(start, length, dontWake)
	return err
}

// ZeroPages is ZeroPage returning the number of bytes mapped: on EAGAIN or
// EEXIST the kernel may have mapped a prefix of the range, as Copy may.
func (f *FD) ZeroPages(start, length uintptr, dontWake bool) (int64, error) {
	z := uffdioZeropage{Range: uffdioRange{uint64(start), uint64(length)}}
	if dontWake {
		z.Mode = zeropageModeDontWake
	}
	for {
		z.Zeropage = 0
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(f.fd), ioctlZeropage, uintptr(unsafe.Pointer(&z)))
		if errno == 0 {
			return z.Zeropage, nil
		}
		if errno == unix.EINTR && z.Zeropage <= 0 {
			continue
		}
		return max(z.Zeropage, 0), &OpError{Op: "UFFDIO_ZEROPAGE", Addr: start, Len: length, Err: errno}
	}
}

// OpError is a failed copy or zeropage on a range.
type OpError struct {
	Op   string
	Addr uintptr
	Len  uintptr
	Err  unix.Errno
}

func (e *OpError) Error() string {
	return fmt.Sprintf("userfaultfd %s [%#x,+%#x): %v", e.Op, e.Addr, e.Len, e.Err)
}

func (e *OpError) Unwrap() error { return e.Err }

// IsExist reports whether err means the page was already present.
func IsExist(err error) bool { return errors.Is(err, unix.EEXIST) }

// IsAgain reports whether err means a non-cooperative event is pending.
func IsAgain(err error) bool { return errors.Is(err, unix.EAGAIN) }

// ErrGone is ESRCH: the faulting process's mm no longer exists.
var ErrGone = unix.ESRCH

// IsGone reports whether err means the faulting process no longer exists.
func IsGone(err error) bool { return errors.Is(err, unix.ESRCH) }
