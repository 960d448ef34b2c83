// Package testvm is a test VMM for the serving core's tests: guest memory
// set up the way Firecracker's Uffd backend sets it up (anonymous
// MAP_PRIVATE|MAP_NORESERVE regions laid out around an MMIO gap, a
// userfaultfd, UFFDIO_API, MISSING registration, the region JSON and the fd
// in one sendmsg), in the test process (New) or in a child process running
// the test binary again (StartChild), and vCPU-like touches that raise real
// page faults on it. Nothing of the kernel is mocked.
//
// Touch faults a page the way KVM faults guest memory in for a vCPU: from
// inside the kernel (process_vm_readv on this process, which pins the page
// with get_user_pages). The toucher waits in a system call, so the Go
// runtime never has to stop it, and only a fatal signal interrupts that
// kind of fault: each touch raises exactly one fault event, which lets tests
// count faults exactly. UserTouch faults from user mode (an atomic load on a
// locked OS thread), as the guest emulator's vCPUs do, and only where
// another process serves the faults (Child). AsUID makes a peer of another
// uid; WaitFor, Await and CheckPage are the tests' hang guards and
// byte-for-byte page check.
//
// This package owns these fixtures. It must not be imported by non-test code
// and must not serve pages (the packages under test do).
package testvm
