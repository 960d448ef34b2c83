// Package pagestat owns page statistics of a guest memory file: how many
// pages are zero, how many non-zero pages are distinct by content, how long
// the runs of zero pages are, and, overlaid with a working-set trace, how
// many touched pages are hot (non-zero) or zero.
//
// It is the measuring instrument behind `aquifer inspect` and the zero-page
// classifier that package snapimage uses when it builds an image, so its
// zero test (IsZero) must be fast: a 1 GiB file is scanned well under a
// second (see BenchmarkScan). Distinct counting is exact: pages are bucketed
// by xxhash64 and equal digests are confirmed byte by byte.
//
// The JSON form of Stats is the `inspect --json` schema documented in
// docs/format.md; renaming a JSON field is a breaking change.
//
// This package reads memory files and wset traces only. It must not write
// files, and must not import the image format (snapimage) or any serving
// package.
package pagestat
