// Package demo is the one-command tour of Aquifer that the README's first
// command runs on a fresh machine: it builds an embedded default snapshot,
// starts the serving processes it needs as children of the aquifer binary,
// restores the snapshot through each available path with the guest
// emulator, verifies every byte and prints a comparison.
//
// It composes other packages and owns no serving logic of its own; it must
// not be imported by them.
package demo
