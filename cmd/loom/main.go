// Command loom runs and inspects Loom systems.
//
//	loom demo            a whole system in one process: embedded NATS, three
//	                     backends streaming tokens, a frontend sending a batch
//	loom up              a local control plane: nats-server with JetStream, and
//	                     etcd or NATS KV discovery, for components in other processes
//	loom ls, loom call   list instances, call an endpoint
//	loom pub, loom sub   publish and print events
//	loom queue           inspect and repair work queues
//	loom llm             serve LLM traffic (frontend, router, mock workers)
//	loom config          every configuration key's effective value and source
//	loom dashboard       a live web page of the system
//	loom version         the build: Loom's version, commit, Go toolchain
//
// `loom help` lists every command. Usage errors exit with status 2 and the
// command's usage line; failures exit with 1. A first SIGINT or SIGTERM
// stops a command in order: one that runs until stopped (up, sub, a
// server) then exits 0, and so does a call whose handler, asked to stop,
// ends gracefully; one stopped before its work was done (a batch, a
// listing, a call still looking for an instance) exits 128 + the signal's
// number, 130 or 143, printing no error for it. A second signal exits at
// once with 128 + its number, as loom.Run does.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	_ "github.com/loomrt/loom/discovery/all" // every discovery backend, chosen by discovery.backend
	"github.com/loomrt/loom/otelsetup"
)

func main() {
	// Traces go where the OTEL_* variables say (nowhere if unset).
	stop, err := otelsetup.Setup(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "loom:", err)
		os.Exit(1)
	}
	code := run(newRoot(), os.Stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = stop(ctx)
	cancel()
	os.Exit(code)
}

// run executes root and returns the exit code: 0, 2 for a usage error
// (with the command's usage line), 1 for a failure, 128 + the signal's
// number for a command a first SIGINT or SIGTERM stopped before it had
// done its work, or what the command asked for.
func run(root *cobra.Command, stderr io.Writer) int {
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ec exitCode
	if asExit(err, &ec) {
		return int(ec)
	}
	if ec, ok := interrupted(); ok {
		// Stopped by the first signal before its work was done: the
		// cancellation that followed is what the user asked for, not a
		// failure to report. Anything else that went wrong is said.
		if !errors.Is(err, context.Canceled) {
			fmt.Fprintln(stderr, errorLine(err))
		}
		return int(ec)
	}
	fmt.Fprintln(stderr, errorLine(err))
	var ue *usageError
	if errors.As(err, &ue) {
		use := ue.cmd.UseLine()
		if ue.cmd.HasSubCommands() {
			use = ue.cmd.CommandPath() + " <command> [flags]"
		}
		fmt.Fprintf(stderr, "usage: %s\nRun '%s --help' for more.\n", use, ue.cmd.CommandPath())
		return 2
	}
	return 1
}

// errorLine is how a failed command reports err: prefixed with "loom:",
// unless the message already begins with the program's name, as the
// library's own errors ("loom: no instances: ...") and the commands'
// ("loom demo: ...") do.
func errorLine(err error) string {
	msg := err.Error()
	if strings.HasPrefix(msg, "loom: ") || strings.HasPrefix(msg, "loom ") {
		return msg
	}
	return "loom: " + msg
}

// usageError is a command line that does not parse: unknown commands or
// flags, wrong arguments, bad flag values.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// markUsageErrors makes every flag or argument error of c and its
// subcommands a usageError.
func markUsageErrors(c *cobra.Command) {
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &usageError{c, err} })
	args := c.Args
	if !c.Runnable() {
		// A command group: alone it prints its help; with an unknown
		// subcommand it is a usage error (cobra would print help and exit 0).
		c.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
		args = cobra.NoArgs
	} else if args == nil {
		args = cobra.ArbitraryArgs
	}
	c.Args = func(c *cobra.Command, a []string) error {
		if err := args(c, a); err != nil {
			return &usageError{c, err}
		}
		return nil
	}
	for _, sub := range c.Commands() {
		markUsageErrors(sub)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "loom",
		Short:         "Loom: a distributed runtime for Go services on NATS and etcd",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDemo(), newConfig(), newCall(), newLs(), newUp(), newQueue(), newPub(), newSub(), newLLM(), newDashboard(), newVersion())
	root.Version = versionLine()
	root.SetVersionTemplate("{{.Version}}\n")
	// cobra adds help and completion as it executes, after
	// markUsageErrors would have seen them: add them now, so that their
	// usage errors are marked too.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "help" {
			// cobra's help prints the root's help and exits 0 for a topic
			// that is no command.
			c.Args = func(c *cobra.Command, args []string) error {
				if _, rest, err := c.Root().Find(args); err != nil || len(rest) > 0 {
					return fmt.Errorf("unknown help topic %q: `loom help` lists the commands", strings.Join(args, " "))
				}
				return nil
			}
		}
	}
	markUsageErrors(root)
	return root
}

// exitCode is an error that only sets the process's exit code; the command
// has already said what went wrong.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

func asExit(err error, ec *exitCode) bool {
	e, ok := err.(exitCode)
	if ok {
		*ec = e
	}
	return ok
}
