package loom_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestTheStatusServer(t *testing.T) {
	c := newClusterOn(t, "tcp")
	c.cfg.Status.Port = -1
	rt := c.runtime()
	base := "http://" + rt.StatusAddr()
	if rt.StatusAddr() == "" {
		t.Fatal("status.port = -1 did not start the status server")
	}
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	ep := serve(t, rt, "status/svc/gen", func(ctx context.Context, hold bool) iter.Seq2[int, error] {
		return func(yield func(int, error) bool) {
			if hold {
				entered <- struct{}{}
				<-release
			}
			yield(1, nil)
		}
	})
	cl := client[bool, int](t, c.runtime(), "status/svc/gen")
	if _, err := collect(cl.Generate(context.Background(), false)); err != nil {
		t.Fatal(err)
	}
	t.Run("live and ready while serving", func(t *testing.T) {
		if code, body := get(t, base+"/live"); code != 200 || !strings.Contains(body, "live") {
			t.Fatalf("/live = %d %q", code, body)
		}
		if code, body := get(t, base+"/health"); code != 200 {
			t.Fatalf("/health = %d %q", code, body)
		}
	})
	t.Run("metrics are Loom's registry", func(t *testing.T) {
		_, body := get(t, base+"/metrics")
		if !strings.Contains(body, `loom_requests_total{code="ok",component="svc",endpoint="gen",namespace="status"} 1`) {
			t.Fatalf("/metrics lacks the served request:\n%s", body)
		}
		if !strings.Contains(body, `loom_requests_in_flight{component="svc",endpoint="gen",namespace="status"} 0`) {
			t.Fatalf("/metrics counts a finished request in flight:\n%s", body)
		}
	})
	t.Run("metadata names the instance and what it serves", func(t *testing.T) {
		_, body := get(t, base+"/metadata")
		var md loom.Metadata
		if err := json.Unmarshal([]byte(body), &md); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		if md.Instance != fmt.Sprintf("%x", rt.ID()) || len(md.Served) != 1 || md.Served[0].Path() != ep.Path() || !md.Ready {
			t.Fatalf("/metadata = %+v", md)
		}
	})
	t.Run("a draining process is live but not ready", func(t *testing.T) {
		go func() { _, _ = collect(cl.Generate(context.Background(), true)) }()
		<-entered
		if _, body := get(t, base+"/metrics"); !strings.Contains(body, `loom_requests_in_flight{component="svc",endpoint="gen",namespace="status"} 1`) {
			t.Fatalf("/metrics lacks the request in flight:\n%s", body)
		}
		done := make(chan error, 1)
		go func() { done <- rt.Shutdown(context.Background()) }()
		deadline := time.Now().Add(2 * time.Second)
		for {
			code, body := get(t, base+"/health")
			if code == http.StatusServiceUnavailable && strings.Contains(body, "shutting down") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("/health = %d %q during the drain, want 503", code, body)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if code, _ := get(t, base+"/live"); code != 200 {
			t.Fatalf("/live = %d during the drain", code)
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

func TestAStatusPortInUseIsAClearError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := newCluster(t)
	c.cfg.Status.Port = ln.Addr().(*net.TCPAddr).Port
	_, err = loom.NewRuntime(context.Background(), loom.WithConfig(c.cfg), loom.WithDiscovery(c.store.Connect()), loom.WithLogger(quiet))
	if err == nil || !strings.Contains(err.Error(), "status.port") {
		t.Fatalf("err = %v, want it to name status.port", err)
	}
}

func TestUnreachableDiscoveryFailsFastNamingTheVariable(t *testing.T) {
	dead := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}()
	tests := []struct {
		backend string
		set     func(c *cluster)
		want    string
	}{
		{"etcd", func(c *cluster) { c.cfg.Discovery.EtcdEndpoints = []string{"http://" + dead} }, "ETCD_ENDPOINTS"},
		{"natskv", func(c *cluster) { c.cfg.NATS.URL = "nats://" + dead }, "NATS_SERVER"},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			c := newCluster(t)
			c.cfg.Discovery.Backend = tt.backend
			c.cfg.Discovery.DialTimeout = 500 * time.Millisecond
			c.cfg.NATS.ConnectTimeout = 500 * time.Millisecond
			tt.set(c)
			start := time.Now()
			_, err := loom.NewRuntime(context.Background(), loom.WithConfig(c.cfg), loom.WithLogger(quiet))
			took := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), dead) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to name %s and %s", err, dead, tt.want)
			}
			if took > 3*time.Second {
				t.Fatalf("took %s to fail", took)
			}
		})
	}
}

func TestAChosenStatusPortIsLoggedAtInfo(t *testing.T) {
	for _, tc := range []struct {
		port int
		want string
	}{
		{-1, `level=INFO msg="status server listening on a free port"`},
		{0, ""},
	} {
		t.Run(fmt.Sprintf("status.port %d", tc.port), func(t *testing.T) {
			c := newClusterOn(t, "local")
			c.cfg.Status.Port, c.cfg.Status.Host = tc.port, "127.0.0.1"
			var logs testutil.SyncBuffer
			rt := c.runtime(loom.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))))
			got := logs.String()
			if tc.want == "" {
				if strings.Contains(got, "status server") {
					t.Errorf("status server off, yet logged:\n%s", got)
				}
				return
			}
			if !strings.Contains(got, tc.want) || !strings.Contains(got, "addr="+rt.StatusAddr()) {
				t.Errorf("the log at info does not give the chosen address %s:\n%s", rt.StatusAddr(), got)
			}
		})
	}
}

// TestANATSConnectionClosedForGoodIsNotLive: a NATS connection that gave
// up reconnecting (nats.max_reconnects) never comes back, so /live and
// /health say so and name the cause, for an orchestrator to restart the
// process; a connection still reconnecting is live.
func TestANATSConnectionClosedForGoodIsNotLive(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	c := newClusterOn(t, "tcp")
	c.cfg.NATS.URL = ns.ClientURL()
	c.cfg.NATS.MaxReconnects = 2
	c.cfg.NATS.ReconnectWait = 200 * time.Millisecond
	c.cfg.Status.Port = -1
	rt := c.runtime()
	nc, err := rt.NATS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + rt.StatusAddr()
	if code, body := get(t, base+"/live"); code != 200 {
		t.Fatalf("/live = %d %q while connected", code, body)
	}
	reconnecting := make(chan struct{})
	var once sync.Once
	nc.SetDisconnectErrHandler(func(*nats.Conn, error) { once.Do(func() { close(reconnecting) }) })
	ns.Shutdown()
	<-reconnecting
	// A 503 counts only if the connection was still reconnecting after
	// the answer too: it may have given up while the probe was asked.
	if !nc.IsClosed() {
		if code, body := get(t, base+"/live"); code != 200 && !nc.IsClosed() {
			t.Fatalf("/live = %d %q while the connection reconnects", code, body)
		}
	}
	testutil.Eventually(t, 10*time.Second, "the connection closed for good", nc.IsClosed)
	for _, path := range []string{"/live", "/health"} {
		code, body := get(t, base+path)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "NATS connection is closed for good") || !strings.Contains(body, "nats.max_reconnects") {
			t.Errorf("%s = %d %q; want 503 naming the closed connection and nats.max_reconnects", path, code, body)
		}
	}
}

// TestTheProbesAnswerWhileTheNATSConnectionIsBeingMade: a first NATS
// connection that takes long (a server that accepts and never answers) is
// not the connection closed for good: /live and /health answer at once
// meanwhile, as a probe with a 1s timeout needs, instead of waiting for
// the connection attempt (nats.connect_timeout) to end.
func TestTheProbesAnswerWhileTheNATSConnectionIsBeingMade(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- conn // held open, never answered
		}
	}()
	defer func() {
		for {
			select {
			case conn := <-accepted:
				conn.Close()
			default:
				return
			}
		}
	}()
	c := newClusterOn(t, "tcp")
	c.cfg.NATS.URL = "nats://" + ln.Addr().String()
	c.cfg.NATS.ConnectTimeout = 10 * time.Second
	c.cfg.Status.Port = -1
	rt := c.runtime()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	connecting := make(chan error, 1)
	go func() {
		_, err := rt.NATS(ctx)
		connecting <- err
	}()
	var conn net.Conn
	select {
	case conn = <-accepted:
		accepted <- conn // closed at the end
	case err := <-connecting:
		t.Fatalf("the connection attempt ended before the server accepted it: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the NATS connection attempt did not reach the server")
	}
	probe := &http.Client{Timeout: time.Second}
	for _, path := range []string{"/live", "/health"} {
		resp, err := probe.Get("http://" + rt.StatusAddr() + path)
		if err != nil {
			t.Fatalf("%s while the NATS connection is being made: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s = %d while the NATS connection is being made, want 200", path, resp.StatusCode)
		}
	}
	cancel()
	if err := <-connecting; err == nil {
		t.Fatal("a connection to a server that never answered succeeded")
	}
}

// scrapeWithoutReading asks rt's status server for /metrics, grown to
// 16 MB, past what the sockets' buffers hold (Linux lets a send buffer
// grow to 4 MB), reads the status line and then nothing more: the
// server's write waits on the client.
func scrapeWithoutReading(t *testing.T, rt *loom.Runtime) net.Conn {
	t.Helper()
	padding := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "test_padding", Help: "Series that make /metrics large."}, []string{"n"})
	rt.Metrics().Registry().MustRegister(padding)
	long := strings.Repeat("x", 1000)
	for i := range 16_000 {
		padding.WithLabelValues(strconv.Itoa(i) + long).Set(1)
	}
	conn, err := testutil.SmallReceiveBuffers().Dial("tcp", rt.StatusAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, "GET /metrics HTTP/1.1\r\nHost: loom\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(io.LimitReader(conn, 64)).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("/metrics began %q, %v", line, err)
	}
	return conn
}

// readsToTheEnd reads conn until the server closes it, and fails if it
// does not within 10s.
func readsToTheEnd(t *testing.T, conn net.Conn, what string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("%s: the status server did not close the connection of a client that stopped reading: %v", what, err)
	}
}

// TestAScraperThatStopsReadingIsCutOffAtShutdown: Shutdown closes the
// connection of a client that stopped reading /metrics. It waited 2s for
// it, returned that wait's error, and left the server's goroutine blocked
// in its write until TCP gave up on the peer, some 15 minutes later.
func TestAScraperThatStopsReadingIsCutOffAtShutdown(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	c := newClusterOn(t, "tcp")
	c.cfg.Status.Port = -1
	rt := c.runtime()
	conn := scrapeWithoutReading(t, rt)
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown with a client that stopped reading /metrics: %v", err)
	}
	readsToTheEnd(t, conn, "at Shutdown")
	goleak.VerifyNone(t, ignore)
}

// TestAScraperThatStopsReadingIsLetGo: a client that stops reading an
// answer is cut off once the answer has taken the status server's write
// timeout, while the runtime goes on.
func TestAScraperThatStopsReadingIsLetGo(t *testing.T) {
	// The write timeout runs from the request, so it covers gathering
	// and encoding the 16 MB answer before its first byte leaves: with
	// -race on a loaded 2-core machine that took 220-370ms and at times
	// more than 500ms, the timeout this test had, and the server then
	// closed the connection without a byte. 3s is ten times that.
	const timeout = 3 * time.Second
	defer loom.SetStatusWriteTimeout(timeout)()
	c := newClusterOn(t, "tcp")
	c.cfg.Status.Port = -1
	rt := c.runtime()
	conn := scrapeWithoutReading(t, rt)
	// The deadline was set before the answer's first line left, so it
	// has passed one timeout after that line came.
	time.Sleep(timeout)
	readsToTheEnd(t, conn, "after the write timeout")
	if code, body := get(t, "http://"+rt.StatusAddr()+"/live"); code != 200 {
		t.Fatalf("/live = %d %q after a client was let go", code, body)
	}
}

// TestMetadataListsWhatIsServedNow: an endpoint closed on its own leaves
// /metadata, as it leaves discovery; it was listed for the life of the
// process.
func TestMetadataListsWhatIsServedNow(t *testing.T) {
	c := newClusterOn(t, "tcp")
	c.cfg.Status.Port = -1
	rt := c.runtime()
	echo := func(ctx context.Context, s string) iter.Seq2[string, error] {
		return func(yield func(string, error) bool) { yield(s, nil) }
	}
	kept := serve(t, rt, "md/svc/kept", echo)
	closed := serve(t, rt, "md/svc/closed", echo)
	served := func() []string {
		_, body := get(t, "http://"+rt.StatusAddr()+"/metadata")
		var md loom.Metadata
		if err := json.Unmarshal([]byte(body), &md); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		var paths []string
		for _, inst := range md.Served {
			paths = append(paths, inst.Path())
		}
		slices.Sort(paths)
		return paths
	}
	if got := served(); !slices.Equal(got, []string{closed.Path(), kept.Path()}) {
		t.Fatalf("/metadata serves %q; want both endpoints", got)
	}
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	if got := served(); !slices.Equal(got, []string{kept.Path()}) {
		t.Fatalf("/metadata serves %q after %s was closed; want only %s", got, closed.Path(), kept.Path())
	}
}
