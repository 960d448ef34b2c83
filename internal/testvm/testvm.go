package testvm

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/aquifer-pool/aquifer/handshake"
	"github.com/aquifer-pool/aquifer/offheap"
	"github.com/aquifer-pool/aquifer/uffd"
	"golang.org/x/sys/unix"
)

// PageSize is the guest page size of every test VM.
const PageSize = handshake.PageSize4K

// Options describe a test VM's memory.
type Options struct {
	// Size is the memory-file size in bytes, a non-zero multiple of PageSize.
	Size uint64 `json:"size"`
	// Split, if non-zero and below Size, starts a second region at this
	// memory-file offset (Firecracker's two regions around the MMIO gap).
	// Each region is its own mapping, so the regions are not contiguous in
	// the VMM's address space.
	Split uint64 `json:"split,omitempty"`
	// Remove negotiates UFFD_FEATURE_EVENT_REMOVE, as Firecracker does
	// when the VM has a balloon: MADV_DONTNEED (Remove) then raises
	// UFFD_EVENT_REMOVE and waits until the handler has read it.
	Remove bool `json:"remove,omitempty"`
}

// VM is guest memory registered with a userfaultfd in this process.
type VM struct {
	// UFFD is the VM's userfaultfd; hand it to the code under test (or send
	// it with Send). Close closes it.
	UFFD *uffd.FD
	// Regions describe the memory as Firecracker's handshake does.
	Regions []handshake.Region

	maps    []*offheap.Mapping
	size    uint64
	touches sync.WaitGroup
	once    sync.Once
}

// Start maps and registers the memory of o.
func Start(o Options) (*VM, error) {
	if o.Size == 0 || o.Size%PageSize != 0 || o.Split%PageSize != 0 {
		return nil, fmt.Errorf("testvm: size %d, split %d: not page multiples", o.Size, o.Split)
	}
	u, err := uffd.New()
	if err != nil {
		return nil, err
	}
	v := &VM{UFFD: u, size: o.Size}
	var features uint64
	if o.Remove {
		features = uffd.FeatureEventRemove
	}
	if _, err := u.API(features); err != nil {
		v.Close()
		return nil, err
	}
	bounds := []uint64{0, o.Size}
	if o.Split > 0 && o.Split < o.Size {
		bounds = []uint64{0, o.Split, o.Size}
	}
	for i := 0; i+1 < len(bounds); i++ {
		n := bounds[i+1] - bounds[i]
		m, err := offheap.Anon(int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_NORESERVE)
		if err != nil {
			v.Close()
			return nil, err
		}
		v.maps = append(v.maps, m)
		if _, err := u.Register(m.Addr(), uintptr(n), uffd.RegisterModeMissing); err != nil {
			v.Close()
			return nil, err
		}
		v.Regions = append(v.Regions, handshake.Region{BaseHostVirtAddr: uint64(m.Addr()), Size: n, Offset: bounds[i], PageSize: PageSize})
	}
	return v, nil
}

// New is Start for a test: it skips the test when this machine has no
// userfaultfd and closes the VM when the test ends.
func New(tb testing.TB, o Options) *VM {
	tb.Helper()
	v, err := Start(o)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
			tb.Skipf("userfaultfd is not available here: %v", err)
		}
		tb.Fatal(err)
	}
	tb.Cleanup(v.Close)
	return v
}

// Pages is the number of guest pages.
func (v *VM) Pages() uint64 { return v.size / PageSize }

// Addr returns the host address of memory-file page p.
func (v *VM) Addr(p uint64) uintptr {
	off := p * PageSize
	for i, r := range v.Regions {
		if off >= r.Offset && off < r.Offset+r.Size {
			return v.maps[i].Addr() + uintptr(off-r.Offset)
		}
	}
	panic(fmt.Sprintf("testvm: page %d beyond the %d-page VM", p, v.Pages()))
}

// Bytes returns page p's bytes as the VM sees them. Read them only once the
// page is present (after a touch returned): reading a missing page from Go
// code faults in user mode on the caller's goroutine.
func (v *VM) Bytes(p uint64) []byte { return offheap.At(v.Addr(p), PageSize) }

// Touch faults page p in for reading from inside the kernel, the way KVM
// does for a vCPU (get_user_pages, through process_vm_readv on this
// process), and returns once the page is present and the toucher woken.
func (v *VM) Touch(p uint64) error {
	v.touches.Add(1)
	defer v.touches.Done()
	return v.touch(p)
}

func (v *VM) touch(p uint64) error {
	var b [8]byte
	return v.kernelAccess(p, b[:], false)
}

// Write faults page p in for writing from inside the kernel and stores val
// in its first 8 bytes (little endian): afterwards the page holds its
// snapshot content with that word replaced.
func (v *VM) Write(p, val uint64) error {
	var b [8]byte
	for i := range b {
		b[i] = byte(val >> (8 * i))
	}
	v.touches.Add(1)
	defer v.touches.Done()
	return v.kernelAccess(p, b[:], true)
}

func (v *VM) kernelAccess(p uint64, b []byte, write bool) error {
	local := []unix.Iovec{{Base: &b[0], Len: uint64(len(b))}}
	remote := []unix.RemoteIovec{{Base: v.Addr(p), Len: len(b)}}
	for {
		var n int
		var err error
		if write {
			n, err = unix.ProcessVMWritev(os.Getpid(), local, remote, 0)
		} else {
			n, err = unix.ProcessVMReadv(os.Getpid(), local, remote, 0)
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("testvm: touching page %d: %w", p, err)
		}
		if n != len(b) {
			return fmt.Errorf("testvm: touching page %d: %d of %d bytes", p, n, len(b))
		}
		return nil
	}
}

// TouchAsync is Touch on its own goroutine; the channel yields its result.
func (v *VM) TouchAsync(p uint64) <-chan error {
	ch := make(chan error, 1)
	v.touches.Add(1) // here, so that it happens before Close's Wait
	go func() {
		defer v.touches.Done()
		ch <- v.touch(p)
	}()
	return ch
}

// UserTouch loads the first word of page p from user mode on a locked OS
// thread (a genuine user-mode fault, as the guest emulator's vCPUs raise)
// and returns it. A user-mode fault can be raised again when a signal
// interrupts it, so a handler may see more than one event for it. Use it
// only where another process serves the faults (Child.UserTouch): a
// user-mode fault that waits inside code the Go runtime cannot preempt (the
// race detector's atomics are such code) would stall a garbage collection
// that this process's serving goroutines must wait for.
func (v *VM) UserTouch(p uint64) uint64 {
	v.touches.Add(1)
	defer v.touches.Done()
	ch := make(chan uint64, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		b := offheap.At(v.Addr(p), 8)
		ch <- atomic.LoadUint64((*uint64)(unsafe.Pointer(&b[0])))
	}()
	return <-ch
}

// Resident reports whether page p is present (mincore), without touching it.
func (v *VM) Resident(p uint64) (bool, error) {
	var vec [1]byte
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, v.Addr(p), PageSize, uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return false, fmt.Errorf("testvm: mincore page %d: %w", p, errno)
	}
	return vec[0]&1 != 0, nil
}

// Remove discards pages [p, p+n) the way Firecracker's balloon does
// (MADV_DONTNEED). With Options.Remove it returns only once the handler has
// read the UFFD_EVENT_REMOVE.
func (v *VM) Remove(p, n uint64) error {
	for n > 0 {
		i := v.region(p)
		r := v.Regions[i]
		k := min(n, (r.Offset+r.Size)/PageSize-p)
		if err := unix.Madvise(offheap.At(v.Addr(p), int(k*PageSize)), unix.MADV_DONTNEED); err != nil {
			return fmt.Errorf("testvm: madvise(DONTNEED) pages [%d,+%d): %w", p, k, err)
		}
		p, n = p+k, n-k
	}
	return nil
}

func (v *VM) region(p uint64) int {
	for i, r := range v.Regions {
		if p*PageSize >= r.Offset && p*PageSize < r.Offset+r.Size {
			return i
		}
	}
	panic(fmt.Sprintf("testvm: page %d beyond the %d-page VM", p, v.Pages()))
}

// Send is Firecracker's side of the handshake: connect to socket and send
// the region JSON of dialect d with the userfaultfd in one sendmsg. The
// connection is returned open (1.12+ keeps it until the VM exits).
func (v *VM) Send(socket string, d handshake.Dialect) (*net.UnixConn, error) {
	return handshake.Send(socket, v.Regions, d, v.UFFD.Fd())
}

// SendAs is Send from a peer of another uid (see AsUID): the listener sees
// uid in SO_PEERCRED. The socket must be reachable by uid. The connection
// is closed once the message is sent (or refused).
func (v *VM) SendAs(uid int, socket string, d handshake.Dialect) error {
	body, err := handshake.Marshal(v.Regions, d)
	if err != nil {
		return err
	}
	return AsUID(uid, func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: socket}); err != nil {
			return fmt.Errorf("testvm: connect %s as uid %d: %w", socket, uid, err)
		}
		return unix.Sendmsg(fd, body, unix.UnixRights(v.UFFD.Fd()), nil, 0)
	})
}

// AsUID runs fn on an OS thread of its own whose real, effective and saved
// uid are uid (setresuid on that thread alone; the thread ends with fn), so
// sockets it connects carry uid in SO_PEERCRED and its file accesses are
// checked as uid's. fn must stay on its goroutine (raw system calls).
func AsUID(uid int, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		// Never unlocked: the thread's credentials changed, so it must die
		// with this goroutine rather than run other goroutines.
		runtime.LockOSThread()
		if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); errno != 0 {
			ch <- fmt.Errorf("testvm: setresuid(%d) on this thread: %w", uid, errno)
			return
		}
		ch <- fn()
	}()
	return <-ch
}

// Close closes the userfaultfd (the kernel then wakes every thread waiting
// on a fault and fills the rest of the memory itself), waits for touches in
// flight and unmaps the memory. It is idempotent.
func (v *VM) Close() {
	v.once.Do(func() {
		v.UFFD.Close()
		v.touches.Wait()
		for _, m := range v.maps {
			m.Unmap()
		}
	})
}

// WaitFor polls cond until it holds and fails the test if it never does
// within 30 s: a guard against a hang, not a timing assertion.
func WaitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			tb.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Await receives a touch's result (TouchAsync), failing the test if the
// touch failed or its vCPU is never woken.
func Await(tb testing.TB, what string, ch <-chan error) {
	tb.Helper()
	select {
	case err := <-ch:
		if err != nil {
			tb.Fatalf("%s: %v", what, err)
		}
	case <-time.After(30 * time.Second):
		tb.Fatalf("%s: the vCPU was never woken", what)
	}
}

// CheckPage fails the test unless page p's bytes got are want, naming the
// first byte that differs.
func CheckPage(tb testing.TB, p uint64, got, want []byte) {
	tb.Helper()
	if bytes.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		tb.Fatalf("page %d: %d bytes, want %d", p, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			tb.Fatalf("page %d byte %d: got %#02x, want %#02x", p, i, got[i], want[i])
		}
	}
}
