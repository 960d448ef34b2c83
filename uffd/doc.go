// Package uffd is Aquifer's interface to the Linux userfaultfd(2) kernel ABI,
// written on golang.org/x/sys/unix without cgo.
//
// It owns the ioctl encodings and struct layouts of linux/userfaultfd.h
// (x86_64 and arm64 share them), creation of a userfaultfd (the syscall, then
// /dev/userfaultfd + USERFAULTFD_IOC_NEW), the UFFDIO_API handshake,
// registration, UFFDIO_COPY (single pages and contiguous runs, with DONTWAKE
// batches finished by UFFDIO_WAKE), UFFDIO_ZEROPAGE, UFFDIO_WAKE and decoding
// of the 32-byte uffd_msg events (PAGEFAULT, REMOVE and the ones Firecracker
// never enables).
//
// Error contract: every call retries EINTR (Go's SIGURG preemption
// interrupts ioctls). EEXIST, EAGAIN and ESRCH are returned wrapped so that
// errors.Is(err, unix.EEXIST) etc. work; their meaning for a handler is:
//
//   - EEXIST: the page is already present; the kernel did not wake waiters,
//     so a handler must UFFDIO_WAKE the range itself.
//   - EAGAIN: a REMOVE (or other non-cooperative event) is pending; drain
//     the event queue, then retry. Copy reports how much it copied before.
//   - ESRCH: the faulting process's mm is gone; the VM exited.
//
// The file descriptor is kept as a raw int (os.File.Fd would switch it to
// blocking mode). The package does no policy: which page to copy from where
// is decided by package handler and, later, the pager. It must not import
// any other Aquifer package.
package uffd
