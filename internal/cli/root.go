// Package cli holds the cobra command tree of the aquifer binary.
//
// Each subcommand lives in its own file and registers itself with
// register() from an init function, so concept packages never import cobra
// and commands stay thin: parse flags, call into a concept package, print.
// This package must not contain serving logic.
package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
)

var (
	rootCmd = &cobra.Command{
		Use:   "aquifer",
		Short: "Serve Firecracker microVM snapshots from a hierarchical CXL + RDMA memory pool",
		Long: `aquifer serves Firecracker microVM snapshot memory through the UFFD memory
backend: hot pages from a pod-local CXL tier are installed before the VM
resumes, cold pages are demand-paged from a cluster-wide RDMA tier, and zero
pages are never stored.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			setupLogging()
		},
	}
	logLevel  string
	logFormat string
)

func init() {
	rootCmd.PersistentFlags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	rootCmd.PersistentFlags().StringVar(&logFormat, "log-format", "text", "log format: text or json")
}

// register adds a subcommand to the root. Call it from init functions.
func register(cmds ...*cobra.Command) { rootCmd.AddCommand(cmds...) }

func setupLogging() {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if logFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	slog.SetDefault(slog.New(h))
}

// exitError carries a specific exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Execute runs the command tree and returns the process exit code.
func Execute() int {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "aquifer:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}
