package loom

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"
)

// ExitTimeout is the exit code when shutdown does not finish within the
// hard timeout (shutdown.timeout), as in Dynamo. POSIX keeps only the low
// 8 bits of an exit code, so a shell or a supervisor on Linux sees
// ExitTimeout&0xff = 143, as it does for Dynamo.
const ExitTimeout = 911

// Run runs main as the process's program and exits when it is done; it
// never returns. It is the entry point of a Loom process (Dynamo's
// Worker::execute): it builds a Runtime from the configuration and opts and
// calls main with it and a context that is cancelled when the process is
// asked to stop.
//
// On SIGINT or SIGTERM it shuts down in phases: main's context is
// cancelled, and at the same time served endpoints stop accepting requests
// and leave discovery; in-flight requests may finish for
// shutdown.grace_period; those still running are cancelled; once main has
// returned (its own calls keep working until then), clients and
// connections close. The exit code is 0 when main
// returned nil and every handler returned, 1 when main failed, and
// ExitTimeout (911) when this took longer than shutdown.timeout. A second
// signal exits at once with 128 + the signal number. When main returns by
// itself, the same shutdown follows.
func Run(main func(ctx context.Context, rt *Runtime) error, opts ...Option) {
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	os.Exit(run(main, signals, opts...))
}

func run(main func(ctx context.Context, rt *Runtime) error, signals <-chan os.Signal, opts ...Option) int {
	stopTracing, err := setUpTracing(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rt, err := NewRuntime(context.Background(), opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = stopTracing(context.Background())
		return 1
	}
	defer flushTracing(rt, stopTracing)
	log := rt.log
	appCtx, stopApp := context.WithCancel(context.Background())
	defer stopApp()
	mainDone := make(chan error, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				log.Error("main panicked", "panic", v, "stack", string(debug.Stack()))
				mainDone <- fmt.Errorf("main panicked: %v", v)
			}
		}()
		mainDone <- main(appCtx, rt)
	}()

	var mainErr error
	finished := false
	select {
	case mainErr = <-mainDone:
		finished = true
	case sig := <-signals:
		log.Info("shutting down", "signal", sig.String(), "grace_period", rt.cfg.Shutdown.GracePeriod, "timeout", rt.cfg.Shutdown.Timeout)
	}
	stopApp()
	hard := time.NewTimer(rt.cfg.Shutdown.Timeout)
	defer hard.Stop()

	done := make(chan int, 1)
	go func() {
		grace, cancel := context.WithTimeout(context.Background(), rt.cfg.Shutdown.GracePeriod)
		defer cancel()
		// Serving drains while main winds down; main's own calls keep
		// working until it returns, then clients and connections close.
		if err := rt.drain(grace); err != nil {
			log.Warn("shutdown", "err", err)
		}
		if !finished {
			mainErr = <-mainDone
		}
		if err := rt.Shutdown(grace); err != nil {
			log.Warn("shutdown", "err", err)
		}
		for rt.inFlight() > 0 { // cancelled handlers still returning
			time.Sleep(5 * time.Millisecond)
		}
		if mainErr != nil && !errors.Is(mainErr, context.Canceled) {
			log.Error("main failed", "err", mainErr)
			done <- 1
			return
		}
		log.Info("shut down cleanly")
		done <- 0
	}()
	select {
	case code := <-done:
		return code
	case sig := <-signals:
		log.Warn("second signal; exiting now", "signal", sig.String())
		if s, ok := sig.(syscall.Signal); ok {
			return 128 + int(s)
		}
		return 1
	case <-hard.C:
		log.Error("shutdown did not finish in time; exiting", "timeout", rt.cfg.Shutdown.Timeout, "in_flight", rt.inFlight(), "code", ExitTimeout)
		return ExitTimeout
	}
}
