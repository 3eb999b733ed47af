// Command loom runs and inspects Loom systems.
//
//	loom demo            a whole system in one process: embedded NATS, three
//	                     backends streaming tokens, a frontend sending a batch
//	loom demo --serve    the same, serving until SIGINT / SIGTERM
//	loom config          every configuration key's effective value and source
package main

import (
	"fmt"
	"os"

	_ "github.com/loomrt/loom/discovery/all" // every discovery backend, chosen by discovery.backend
	"github.com/spf13/cobra"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		var ec exitCode
		if asExit(err, &ec) {
			os.Exit(int(ec))
		}
		fmt.Fprintln(os.Stderr, "loom:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "loom",
		Short:         "Loom: a distributed runtime for Go services on NATS and etcd",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDemo(), newConfig(), newCall(), newLs(), newUp(), newQueue(), newPub(), newSub(), newLLM())
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
