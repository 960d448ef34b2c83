//go:build !amd64

package cxl

func clflushLines(addr uintptr, lines int64)    {}
func clflushoptLines(addr uintptr, lines int64) {}
func clwbLines(addr uintptr, lines int64)       {}
