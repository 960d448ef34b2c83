// Package handshake implements both sides of Firecracker's UFFD memory-backend
// handshake: the JSON region list in every dialect Firecracker has spoken,
// the Unix stream socket, the single SCM_RIGHTS userfaultfd, and the peer's
// identity (SO_PEERCRED, pidfd for exit notification).
//
// Handler side: Listen creates the socket (mode 0600) that Firecracker's
// mem_backend.backend_path names; Accept takes Firecracker's single
// connection and Receive reads until the JSON parses — never waiting for EOF,
// because Firecracker >= 1.12 keeps the socket open — and validates the
// regions against the memory file.
//
// VMM side (used by the guest emulator): Send connects and performs the one
// sendmsg Firecracker performs.
//
// Dialects (see ../shared/notes/firecracker-uffd.md §3):
//
//	1.1–1.6   {"base_host_virt_addr","size","offset"}
//	1.7–1.11  + "page_size_kib" whose value is in bytes
//	1.12+     + "page_size" (bytes); "page_size_kib" kept with the same value
//
// This package owns parsing and validation only; it must not serve pages or
// touch guest memory.
package handshake
