// Package buildinfo reports the version of the running aquifer binary.
//
// It owns the version string only; it must not import any other Aquifer
// package.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is overridden at link time with
// -ldflags "-X github.com/aquifer-pool/aquifer/internal/buildinfo.Version=v1.2.3".
var Version = "v0.1.0-dev"

// String returns a one-line description: version, VCS revision when known,
// Go version and platform.
func String() string {
	rev := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = " (" + s.Value[:12] + ")"
			}
		}
	}
	return fmt.Sprintf("aquifer %s%s %s %s/%s", Version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
