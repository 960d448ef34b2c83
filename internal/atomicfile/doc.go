// Package atomicfile writes files that other processes read: a reader sees
// either the previous file or the complete new one, never a partial write,
// and a file reported written survives a crash.
//
// A write goes to a temporary file in the destination's directory
// (github.com/google/renameio/v2), which is fsynced, renamed over the
// destination, and then the directory itself is fsynced so the rename is
// durable.
//
// Replace is the same sequence without the fsyncs, for state that only
// means something while the machine runs (it dies with the machine, so a
// machine crash has nothing to keep): atomic against a crash of the
// writer, never durable.
//
// This package owns that one sequence. It must not know what the files
// hold; formats stay with their packages (wset, snapimage, memnode, ...).
package atomicfile
