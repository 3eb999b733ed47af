package loom_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"iter"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/testutil"
)

// The tests below run this test binary again as a child process that calls
// loom.Run with one of these scenarios, then signal it as an operator would.
const childEnv = "LOOM_TEST_RUN_CHILD"

// runChild runs the scenario named by childEnv, if any, and reports whether
// it did (it never returns in that case: Run exits).
func runChild() bool {
	scenario := os.Getenv(childEnv)
	if scenario == "" {
		return false
	}
	loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
		ep, err := rt.Endpoint("run/child/work")
		if err != nil {
			return err
		}
		inHandler := make(chan struct{}, 1)
		err = loom.Serve(ctx, ep, loom.EngineFunc[string, string](func(rctx context.Context, mode string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				inHandler <- struct{}{}
				switch mode {
				case "finish": // finishes 300 ms after the signal
					<-ctx.Done()
					time.Sleep(300 * time.Millisecond)
					yield("finished", nil)
				case "cancellable": // runs until cancelled
					<-rctx.Done()
					yield("", rctx.Err())
				case "stuck": // ignores everything
					select {}
				}
			}
		}))
		if err != nil {
			return err
		}
		cl, err := loom.NewClient[string, string](ctx, ep)
		if err != nil {
			return err
		}
		results := make(chan string, 1)
		if scenario != "idle" {
			go func() {
				got, err := collect(cl.Generate(context.Background(), scenario))
				results <- fmt.Sprintf("result: %v %v", got, err)
			}()
			<-inHandler
		}
		fmt.Println("ready")
		<-ctx.Done()
		if scenario == "finish" || scenario == "cancellable" {
			fmt.Println(<-results)
		}
		return nil
	})
	return true
}

type child struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *testutil.SyncBuffer
}

func startChild(t *testing.T, scenario string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{childEnv + "=" + scenario, "LOOM_LOG_LEVEL=info"}, env...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 16), stderr: &testutil.SyncBuffer{}}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			c.lines <- s.Text()
		}
		close(c.lines)
	}()
	c.expect(t, "ready")
	return c
}

func (c *child) expect(t *testing.T, prefix string) string {
	t.Helper()
	select {
	case line, ok := <-c.lines:
		if ok && strings.HasPrefix(line, prefix) {
			return line
		}
		t.Fatalf("child printed %q (open=%v), want %q; stderr:\n%s", line, ok, prefix, c.stderr)
	case <-time.After(10 * time.Second):
		t.Fatalf("child did not print %q; stderr:\n%s", prefix, c.stderr)
	}
	return ""
}

// exit waits for the child and returns its exit code and how long it took.
func (c *child) exit(t *testing.T, limit time.Duration) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), time.Since(start)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, time.Since(start)
	case <-time.After(limit):
		t.Fatalf("child still running after %s; stderr:\n%s", limit, c.stderr)
	}
	return -1, 0
}

func TestRunShutsDownInPhases(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	t.Parallel()
	t.Run("an idle process exits 0 on SIGTERM", func(t *testing.T) {
		t.Parallel()
		c := startChild(t, "idle")
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		if code, _ := c.exit(t, 10*time.Second); code != 0 {
			t.Fatalf("exit code %d, want 0; stderr:\n%s", code, c.stderr)
		}
		if !strings.Contains(c.stderr.String(), "shut down cleanly") {
			t.Errorf("stderr does not log a clean shutdown:\n%s", c.stderr)
		}
	})
	t.Run("an in-flight request finishes within the grace period and the exit is 0", func(t *testing.T) {
		t.Parallel()
		c := startChild(t, "finish", "LOOM_SHUTDOWN_GRACE_PERIOD=5s")
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		if line := c.expect(t, "result:"); line != "result: [finished] <nil>" {
			t.Fatalf("the in-flight request ended with %q", line)
		}
		if code, _ := c.exit(t, 10*time.Second); code != 0 {
			t.Fatalf("exit code %d, want 0; stderr:\n%s", code, c.stderr)
		}
	})
	t.Run("a request still running after the grace period is cancelled", func(t *testing.T) {
		t.Parallel()
		c := startChild(t, "cancellable", "LOOM_SHUTDOWN_GRACE_PERIOD=200ms")
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		if line := c.expect(t, "result:"); !strings.Contains(line, "context canceled") && !strings.Contains(line, "shut down") {
			t.Fatalf("the in-flight request ended with %q, want it cancelled", line)
		}
		if code, _ := c.exit(t, 10*time.Second); code != 0 {
			t.Fatalf("exit code %d, want 0; stderr:\n%s", code, c.stderr)
		}
		if !strings.Contains(c.stderr.String(), "1 requests still running after the grace period were cancelled") {
			t.Errorf("stderr does not report the cancelled request:\n%s", c.stderr)
		}
	})
	t.Run("a handler that ignores cancellation makes the exit 911 at the hard timeout", func(t *testing.T) {
		t.Parallel()
		c := startChild(t, "stuck", "LOOM_SHUTDOWN_GRACE_PERIOD=100ms", "LOOM_SHUTDOWN_TIMEOUT=500ms")
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		code, took := c.exit(t, 10*time.Second)
		if code != loom.ExitTimeout&0xff || !strings.Contains(c.stderr.String(), "code=911") {
			t.Fatalf("exit status %d, want %d (911 as POSIX reports it) and a log of code 911; stderr:\n%s", code, loom.ExitTimeout&0xff, c.stderr)
		}
		if took < 400*time.Millisecond {
			t.Errorf("exited after %s, before the 500ms hard timeout", took)
		}
	})
	t.Run("a second signal exits at once", func(t *testing.T) {
		t.Parallel()
		c := startChild(t, "stuck", "LOOM_SHUTDOWN_TIMEOUT=1m")
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		// The second signal comes once the first has demonstrably begun
		// the shutdown; before that it would be the first.
		testutil.Eventually(t, 20*time.Second, "the child to log that it is shutting down", func() bool {
			return strings.Contains(c.stderr.String(), "shutting down")
		})
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		code, took := c.exit(t, 10*time.Second)
		if code != 128+int(syscall.SIGINT) {
			t.Fatalf("exit code %d, want %d; stderr:\n%s", code, 128+int(syscall.SIGINT), c.stderr)
		}
		if took > 5*time.Second {
			t.Errorf("took %s to exit after the second signal", took)
		}
	})
}
