package loom_test

import (
	"context"
	"fmt"
	"iter"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/internal/testutil"
)

// TestServerChurnLeavesNoStateInTheCaller has a long-lived caller call
// servers that come and go (half shut down gracefully, half as a crash),
// as workers do under scaling and rolling restarts, and checks that what
// the caller keeps per server (its client's instances, its request
// planes' addresses, hosts and connections, its goroutines) comes back to
// what the server still running needs.
func TestServerChurnLeavesNoStateInTheCaller(t *testing.T) {
	for _, plane := range []string{"tcp", "nats"} {
		t.Run("over "+plane, func(t *testing.T) {
			const cycles = 40
			c := newClusterOn(t, plane)
			const path = "churn/worker/generate"
			echo := func(_ context.Context, req string) iter.Seq2[string, error] {
				return func(yield func(string, error) bool) { yield(req, nil) }
			}
			serve(t, c.runtime(), path, echo)
			caller := c.runtime()
			cl := client[string, string](t, caller, path)
			waitInstances(t, cl, 1)
			ctx := testutil.Timeout(t, 30*time.Second)
			call := func(e loom.Engine[string, string]) {
				t.Helper()
				if _, err := collect(e.Generate(ctx, "hi")); err != nil {
					t.Fatal(err)
				}
			}
			call(cl)
			baseAddrs, baseHosts, baseConns := loom.PlanesHeld(caller)
			baseG := runtime.NumGoroutine()

			for i := range cycles {
				d := c.store.Connect()
				rt, err := loom.NewRuntime(ctx, loom.WithConfig(c.cfg), loom.WithDiscovery(d), loom.WithLogger(quiet))
				if err != nil {
					t.Fatal(err)
				}
				serve(t, rt, path, echo)
				id := rt.ID()
				if err := cl.WaitForInstance(ctx, func(in discovery.Instance) bool { return in.ID == id }); err != nil {
					t.Fatal(err)
				}
				call(cl.Direct(id))
				if i%2 == 0 {
					err = rt.Shutdown(ctx)
				} else {
					now, cancel := context.WithCancel(ctx)
					cancel()
					_ = rt.Shutdown(now)
				}
				_ = d.Close()
				if err != nil {
					t.Fatal(err)
				}
				testutil.Eventually(t, 10*time.Second, fmt.Sprintf("cycle %d: the client to drop server %x", i, id), func() bool {
					return !slices.ContainsFunc(cl.Instances(), func(in discovery.Instance) bool { return in.ID == id })
				})
			}
			call(cl)

			var held string
			lastG := -1
			defer func() {
				if t.Failed() {
					t.Logf("after %d departures: %s, %d goroutines; at the baseline: %d addresses, %d hosts, %d connections, %d goroutines", cycles, held, lastG, baseAddrs, baseHosts, baseConns, baseG)
				}
			}()
			testutil.Eventually(t, 10*time.Second, "the caller's per-server state to come back to the baseline", func() bool {
				inMap, inList := loom.Candidates(cl)
				addrs, hosts, conns := loom.PlanesHeld(caller)
				held = fmt.Sprintf("the client holds %d instances (%d listed); the planes hold %d addresses, %d hosts, %d connections", inMap, inList, addrs, hosts, conns)
				return inMap == 1 && inList == 1 && addrs <= baseAddrs && hosts <= baseHosts && conns <= baseConns
			})
			testutil.Eventually(t, 10*time.Second, "the goroutines to come back to the baseline", func() bool {
				lastG = runtime.NumGoroutine()
				return lastG <= baseG+5
			})
		})
	}
}
