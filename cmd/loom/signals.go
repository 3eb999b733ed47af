package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
)

// stopSignals are the signals that stop a command.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}

// stoppedBy is the number of the first signal a signalContext caught, or
// 0: the command was asked to stop, and what it had not done by then is
// no failure of its own (see interrupted).
var stoppedBy atomic.Int32

// interrupted reports whether a signal has asked the command to stop, and
// the exit code that says so: 128 + the signal's number (130 for SIGINT,
// 143 for SIGTERM), as a shell reports a program the signal ended.
func interrupted() (exitCode, bool) {
	n := stoppedBy.Load()
	return exitCode(128 + n), n != 0
}

// signalContext returns a context that ends at the first SIGINT or
// SIGTERM, so the command stops in order. A second signal exits the
// process at once with 128 + its number, as loom.Run does: a shutdown
// waiting on a server that does not answer can always be cut short.
// The returned stop releases the signals.
func signalContext(parent context.Context, errOut io.Writer) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, stopSignals...)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			n := int32(1)
			if s, ok := sig.(syscall.Signal); ok {
				n = int32(s)
			}
			stoppedBy.CompareAndSwap(0, n)
			cancel()
		case <-done:
			return
		}
		select {
		case sig := <-sigs:
			fmt.Fprintf(errOut, "loom: second signal (%v); exiting now\n", sig)
			n := 1
			if s, ok := sig.(syscall.Signal); ok {
				n = int(s)
			}
			os.Exit(128 + n)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		select {
		case <-done:
		default:
			close(done)
		}
		cancel()
	}
}
