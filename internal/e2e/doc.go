// Package e2e holds end-to-end tests that run the real aquifer binary as
// separate processes — a handler and a Firecracker-faithful guest — over
// real userfaultfds and Unix sockets. It has no non-test code.
package e2e
