// Package offheap owns memory that lives outside the Go heap: anonymous and
// file-backed mmap regions that the kernel (userfaultfd copies), other
// processes (shared CXL emulation) or devices (RDMA registration) touch.
//
// The garbage collector never moves or scans this memory, so its address can
// be handed to ioctls as a plain integer. Callers must Unmap exactly once and
// must not keep slices into a mapping after unmapping it.
//
// This package must not import any other Aquifer package.
package offheap
