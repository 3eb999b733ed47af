//go:build kube

package e2e

import (
	"context"
	"fmt"
	"iter"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	_ "github.com/loomrt/loom/discovery/kube" // registers the kubernetes backend
	"github.com/loomrt/loom/internal/kubetest"
	"github.com/loomrt/loom/internal/testutil"
)

// kubeEnv starts a kube-apiserver and returns a fresh namespace on it and
// its kubeconfig.
func kubeEnv(t *testing.T) (srv *kubetest.Server, ns, kubeconfig string) {
	t.Helper()
	srv = kubetest.Start(t)
	cs, err := kubernetes.NewForConfig(srv.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	ns = "loom-e2e"
	if _, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	return srv, ns, srv.Kubeconfig(true, ns)
}

// Hello servers with LOOM_DISCOVERY=kubernetes: `loom ls --json` shows
// them; SIGTERM removes one within 1s and no call fails; SIGKILL removes
// another within TTL + 2s and only calls in flight on it fail; the API
// server restarts, down for twice the TTL, and a running client keeps
// calling the server that is left, which stays listed.
func TestKubernetesDiscoveryAcrossProcesses(t *testing.T) {
	srv, _, kc := kubeEnv(t)
	env := []string{"LOOM_DISCOVERY=kubernetes", "KUBECONFIG=" + kc, "LOOM_DISCOVERY_LEASE_TTL=" + ttl.String(), "LOOM_LOG_LEVEL=warn"}
	termed, termID := server(t, env)
	killed, killID := server(t, env)
	stay, stayID := server(t, env)
	took := waitListed(t, env, []string{termID, killID, stayID}, 10*time.Second)
	t.Logf("loom ls --json listed the servers %s after they printed their ids", took.Round(time.Millisecond))

	client := start(t, env, "hello", "client", "-calls", "0", "-concurrency", "4", "-report", report)
	waitCalling(t, client, time.Now(), 30*time.Second)
	termed.signal(syscall.SIGTERM)
	gone := waitGone(t, env, termID, 5*time.Second)
	if code := termed.wait(15 * time.Second); code != 0 {
		t.Fatalf("SIGTERMed server exited %d", code)
	}
	t.Logf("SIGTERM: the instance left loom ls after %s", gone.Round(time.Millisecond))
	if gone > time.Second {
		t.Errorf("SIGTERM: the instance took %s to leave; want under 1s", gone)
	}
	waitCalling(t, client, time.Now(), 30*time.Second) // on the servers left
	client.signal(syscall.SIGTERM)
	client.wait(30 * time.Second)
	okA, failedA, failuresA := clientSummary(t, client)
	t.Logf("SIGTERM: client %d ok, %d failed", okA, failedA)
	if failedA != 0 {
		t.Fatalf("calls failed during a graceful stop:\n%s", strings.Join(failuresA, "\n"))
	}

	client = start(t, env, "hello", "client", "-calls", "0", "-concurrency", "4", "-report", report)
	waitCalling(t, client, time.Now(), 30*time.Second)
	killed.signal(syscall.SIGKILL)
	killed.wait(5 * time.Second)
	gone = waitGone(t, env, killID, ttl+4*time.Second)
	t.Logf("SIGKILL: the instance left loom ls after %s (TTL %s)", gone.Round(time.Millisecond), ttl)
	if gone > ttl+2*time.Second {
		t.Errorf("SIGKILL: the instance took %s to leave; want under TTL + 2s = %s", gone, ttl+2*time.Second)
	}
	client.signal(syscall.SIGTERM)
	client.wait(30 * time.Second)
	okB, failedB, failuresB := clientSummary(t, client)
	t.Logf("SIGKILL: client %d ok, %d failed", okB, failedB)
	checkFailures(t, failuresB, 4)
	if left := ids(ls(t, env, "hello")); len(left) != 1 || !left[stayID] {
		t.Fatalf("loom ls lists %v after the SIGKILL; want only %s", left, stayID)
	}

	const window = 100 * time.Millisecond
	client = start(t, env, "hello", "client", "-calls", "0", "-concurrency", "2", "-interval", "10ms", "-report", window.String())
	waitCalling(t, client, time.Now(), 30*time.Second)
	down := time.Now()
	srv.Stop()
	time.Sleep(2 * ttl)
	srv.Restart()
	t.Logf("API server restart: down %s", time.Since(down).Round(time.Millisecond))
	time.Sleep(2 * ttl) // the server renews on the restarted API server
	if left := ids(ls(t, env, "hello")); len(left) != 1 || !left[stayID] {
		t.Fatalf("loom ls lists %v after the API server restart; want only %s", left, stayID)
	}
	// The running client's watch is back: it learns of a server started
	// now, and when the one it knew from before leaves, its calls go to
	// the new one and none fails. A client still watching the API server
	// it had before the restart would be left with no instance.
	_, freshID := server(t, env)
	waitListed(t, env, []string{stayID, freshID}, 10*time.Second)
	stay.signal(syscall.SIGTERM)
	if code := stay.wait(15 * time.Second); code != 0 {
		t.Fatalf("SIGTERMed server exited %d", code)
	}
	left := time.Now()
	testutil.Eventually(t, 20*time.Second, "the client's calls to succeed after the server it knew left", func() bool {
		return okSince(client, left.Add(window)) >= 20
	})
	client.signal(syscall.SIGTERM)
	client.wait(30 * time.Second)
	okC, failedC, failuresC := clientSummary(t, client)
	t.Logf("API server restart: client %d ok, %d failed; %d ok after the server it knew before the restart left", okC, failedC, okSince(client, left.Add(window)))
	if failedC != 0 || okC == 0 {
		t.Fatalf("calls failed across the API server restart:\n%s", strings.Join(failuresC, "\n"))
	}
}

// okSince sums the calls a hello client run with -report says succeeded
// in the windows that ended after since.
func okSince(p *proc, since time.Time) int {
	lines, _ := p.output()
	n := 0
	for _, l := range lines {
		var end int64
		var ok int
		if _, err := fmt.Sscanf(l, "window end_ms=%d ok=%d", &end, &ok); err == nil && end > since.UnixMilli() {
			n += ok
		}
	}
	return n
}

// runtime starts a Loom runtime on the kubernetes backend, in this process
// but with its own discovery client, as another process would have.
func kubeRuntime(t *testing.T, kubeconfig string, id uint64) *loom.Runtime {
	t.Helper()
	cfg := config.Default()
	cfg.Discovery.Backend = "kubernetes"
	cfg.Discovery.Kubeconfig = kubeconfig
	cfg.Discovery.LeaseTTL = ttl
	cfg.Client.LocalFastPath = false
	cfg.Log.Level = "warn"
	opts := []loom.Option{loom.WithConfig(cfg)}
	if id != 0 {
		opts = append(opts, loom.WithInstanceID(id))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rt, err := loom.NewRuntime(ctx, opts...)
	if err != nil {
		t.Fatalf("NewRuntime on the kubernetes backend: %v", err)
	}
	t.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	return rt
}

// serveName serves hello/greeter/greet on rt, answering with name.
func serveName(t *testing.T, rt *loom.Runtime, name string) {
	t.Helper()
	ep, err := rt.Endpoint("hello/greeter/greet")
	if err != nil {
		t.Fatal(err)
	}
	eng := loom.EngineFunc[string, string](func(ctx context.Context, _ string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { yield(name, nil) }
	})
	if err := loom.Serve(t.Context(), ep, eng); err != nil {
		t.Fatal(err)
	}
}

// An instance that registers again under the same id at a new address is
// called there by a client that was running all along: the client's watch
// delivers the record's new content, not only its key.
func TestAReRegisteredInstanceIsCalledAtItsNewAddress(t *testing.T) {
	_, _, kc := kubeEnv(t)
	const id = 0x5eed
	first := kubeRuntime(t, kc, id)
	serveName(t, first, "first")

	caller := kubeRuntime(t, kc, 0)
	ep, err := caller.Endpoint("hello/greeter/greet")
	if err != nil {
		t.Fatal(err)
	}
	c, err := loom.NewClient[string, string](t.Context(), ep)
	if err != nil {
		t.Fatal(err)
	}
	call := func() (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		var got []string
		for s, err := range c.Generate(ctx, "x") {
			if err != nil {
				return "", err
			}
			got = append(got, s)
		}
		return strings.Join(got, ""), nil
	}
	if got, err := call(); err != nil || got != "first" {
		t.Fatalf("first call = %q, %v; want first", got, err)
	}

	// The calls keep going while the instance moves. While it has left
	// and not come back there is no instance, and calls may fail.
	var mu sync.Mutex
	answers := map[string]int{}
	var afterMove []error // failures once the new address answered
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			got, err := call()
			mu.Lock()
			if err != nil {
				answers["error: "+err.Error()]++
				if answers["second"] > 0 {
					afterMove = append(afterMove, err)
				}
			} else {
				answers[got]++
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	})
	defer func() {
		close(stop)
		wg.Wait()
	}()

	if err := first.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutting the first runtime down: %v", err)
	}
	second := kubeRuntime(t, kc, id)
	serveName(t, second, "second")
	moved := time.Now()
	testutil.EventuallyNoError(t, 20*time.Second, fmt.Sprintf("the running client to call instance %x at its new address", id), func() error {
		mu.Lock()
		defer mu.Unlock()
		if answers["second"] >= 10 {
			return nil
		}
		return fmt.Errorf("answers %v", answers)
	})
	// The caller goroutine still runs: answers is read under its lock.
	mu.Lock()
	defer mu.Unlock()
	t.Logf("the running client called instance %x at its new address %s after it registered there; answers %v",
		id, time.Since(moved).Round(time.Millisecond), answers)
	if len(afterMove) > 0 {
		t.Fatalf("calls failed after the new address answered: %v", afterMove)
	}
}
