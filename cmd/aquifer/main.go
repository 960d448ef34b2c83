// Command aquifer serves Firecracker microVM snapshots from a hierarchical
// CXL + RDMA memory pool. Every subcommand lives in internal/cli; this file
// only hands control to it.
package main

import (
	"os"

	"github.com/aquifer-pool/aquifer/internal/cli"
)

func main() {
	os.Exit(cli.Execute())
}
