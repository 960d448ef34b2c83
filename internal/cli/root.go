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
	"strings"
	"sync"

	"github.com/spf13/cobra"
)

var (
	rootCmd = &cobra.Command{
		Use:   "aquifer",
		Short: "Serve Firecracker microVM snapshots from a hierarchical CXL + RDMA memory pool",
		Long: `aquifer serves Firecracker microVM snapshot memory through the UFFD memory
backend: hot pages from a pod-local CXL tier are installed before the VM
resumes, cold pages are demand-paged from a cluster-wide RDMA tier, and zero
pages are never stored.

Environment:
  AQUIFER_API        the pager daemon's control socket for every command that
                     talks to one (status, publish, pool, memnode drain, guest
                     run); default /run/aquifer/api.sock; a flag --api wins
  AQUIFER_CACHE_DIR  where the corpus, guests and packages are cached;
                     default $XDG_CACHE_HOME/aquifer, else ~/.cache/aquifer`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return setupLogging()
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

func setupLogging() error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch logFormat {
	case "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	default:
		return fmt.Errorf("--log-format %q: want text or json", logFormat)
	}
	slog.SetDefault(slog.New(h))
	return nil
}

var finishOnce sync.Once

// root returns the finished command tree: every group of subcommands
// (aquifer cxl, aquifer pool, ...) prints its help when called bare and
// fails, naming its subcommands, on one it does not have (cobra's default
// prints the help and exits 0, hiding a typo from scripts).
func root() *cobra.Command {
	finishOnce.Do(func() { finishGroups(rootCmd) })
	return rootCmd
}

func finishGroups(c *cobra.Command) {
	for _, sub := range c.Commands() {
		finishGroups(sub)
	}
	if !c.HasSubCommands() || c.Runnable() {
		return
	}
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		var names []string
		for _, s := range cmd.Commands() {
			if s.IsAvailableCommand() {
				names = append(names, s.Name())
			}
		}
		return &exitError{code: 2, err: fmt.Errorf("unknown command %q for %q: want one of %s (see %s --help)",
			args[0], cmd.CommandPath(), strings.Join(names, ", "), cmd.CommandPath())}
	}
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
	if err := root().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "aquifer:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}
