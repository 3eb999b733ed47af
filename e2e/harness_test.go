// Package e2e runs Loom as an operator would: the loom and hello binaries
// built from this tree, as separate processes on 127.0.0.1, started,
// signalled and killed.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/internal/testutil"
)

var bin string // directory of the built binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "loom-e2e-")
	if err != nil {
		panic(err)
	}
	for name, pkg := range map[string]string{"loom": "../cmd/loom", "hello": "../examples/hello"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			fmt.Fprintf(os.Stderr, "e2e: building %s failed: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	bin = dir
	// VerifyTestMain ends the process itself: a deferred RemoveAll would
	// never run, and every run would leave the binaries in the temp dir.
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// proc is a running child process whose stdout lines the test can read.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	stderr testutil.SyncBuffer
	done   chan struct{}
	err    error
}

func start(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, name: name + " " + strings.Join(args, " "), cmd: cmd, done: make(chan struct{})}
	cmd.Stderr = &p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, s.Text())
			p.mu.Unlock()
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *proc) output() ([]string, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...), p.stderr.String()
}

// waitLine waits for a stdout line with the prefix and returns it.
func (p *proc) waitLine(prefix string, within time.Duration) string {
	p.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		lines, _ := p.output()
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return l
			}
		}
		select {
		case <-p.done:
			// Every line is read before done closes: look once more.
			lines, errOut := p.output()
			for _, l := range lines {
				if strings.HasPrefix(l, prefix) {
					return l
				}
			}
			p.t.Fatalf("%s exited (%v) before printing %q; stdout %q; stderr:\n%s", p.name, p.err, prefix, lines, errOut)
		case <-time.After(10 * time.Millisecond):
		}
	}
	lines, errOut := p.output()
	p.t.Fatalf("%s did not print %q within %s; stdout %q; stderr:\n%s", p.name, prefix, within, lines, errOut)
	return ""
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(within time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		_, errOut := p.output()
		p.t.Fatalf("%s still running after %s; stderr:\n%s", p.name, within, errOut)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	return 0
}

// controlPlane is a `loom up` with fixed ports, so it can be restarted.
type controlPlane struct {
	t                            *testing.T
	discovery, dir               string
	natsPort, etcdPort, etcdPeer int
	proc                         *proc
	env                          []string
}

func up(t *testing.T, disc string) *controlPlane {
	c := &controlPlane{t: t, discovery: disc, dir: t.TempDir(), natsPort: testutil.FreePort(t), etcdPort: testutil.FreePort(t), etcdPeer: testutil.FreePort(t)}
	c.start()
	return c
}

func (c *controlPlane) start() {
	c.t.Helper()
	c.proc = start(c.t, nil, "loom", "up", "--discovery", c.discovery, "--data-dir", c.dir, "--monitor-port", "0",
		"--nats-port", fmt.Sprint(c.natsPort), "--etcd-port", fmt.Sprint(c.etcdPort), "--etcd-peer-port", fmt.Sprint(c.etcdPeer))
	want := []string{"NATS_SERVER=", "LOOM_DISCOVERY="}
	if c.discovery == "etcd" {
		want = append(want, "ETCD_ENDPOINTS=")
	}
	c.env = nil
	for _, prefix := range want {
		c.env = append(c.env, c.proc.waitLine(prefix, 30*time.Second))
	}
}

func (c *controlPlane) stop() {
	c.t.Helper()
	c.proc.signal(syscall.SIGTERM)
	if code := c.proc.wait(20 * time.Second); code != 0 {
		_, errOut := c.proc.output()
		c.t.Fatalf("loom up exited %d; stderr:\n%s", code, errOut)
	}
}

// componentEnv is what components run with: the control plane's lines,
// a short lease so that dead instances leave quickly, quiet logs.
func (c *controlPlane) componentEnv(ttl time.Duration) []string {
	return append(append([]string(nil), c.env...), "LOOM_DISCOVERY_LEASE_TTL="+ttl.String(), "LOOM_LOG_LEVEL=warn")
}

// ls runs `loom ls --json` and returns the instances.
func ls(t *testing.T, env []string, query string) []discovery.Instance {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "loom"), "ls", "--json", query)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("loom ls: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var list []discovery.Instance
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("loom ls --json printed %q: %v", out, err)
	}
	return list
}

func ids(list []discovery.Instance) map[string]bool {
	m := map[string]bool{}
	for _, inst := range list {
		m[fmt.Sprintf("%x", inst.ID)] = true
	}
	return m
}

// clientSummary parses a hello client's output: the summary counts and
// each failure line.
func clientSummary(t *testing.T, p *proc) (ok, failed int, failures []string) {
	t.Helper()
	lines, errOut := p.output()
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "summary: "):
			if _, err := fmt.Sscanf(l, "summary: ok=%d failed=%d", &ok, &failed); err != nil {
				t.Fatalf("bad summary %q", l)
			}
		case strings.HasPrefix(l, "failed "):
			failures = append(failures, l)
		}
	}
	if ok == 0 && failed == 0 {
		t.Fatalf("client printed no summary; stdout %q; stderr:\n%s", lines, errOut)
	}
	return ok, failed, failures
}

// server starts a hello server, with extra flags, and returns it with
// its instance id.
func server(t *testing.T, env []string, flags ...string) (*proc, string) {
	t.Helper()
	p := start(t, env, "hello", append([]string{"server"}, flags...)...)
	line := p.waitLine("serving ", 30*time.Second)
	return p, line[strings.LastIndex(line, " ")+1:]
}

// startRuntime starts a runtime in the test process, shut down (within
// 10s) when the test ends.
func startRuntime(ctx context.Context, t *testing.T, opts ...loom.Option) *loom.Runtime {
	t.Helper()
	rt, err := loom.NewRuntime(ctx, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = rt.Shutdown(sctx)
	})
	return rt
}
