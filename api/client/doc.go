// Package client is a Go client of the pager daemon's control API (package
// api) over its Unix socket. It imports only package api and the standard
// library, so a program that uses it never links the daemon, the tiers or
// etcd. Every call has a deadline (Options.Timeout, or the wait plus a
// margin for /ready): nothing it does can hang without bound.
package client
