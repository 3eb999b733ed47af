package etcdserver_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/loomrt/loom/embedded/etcdserver"

	"github.com/loomrt/loom/internal/testutil"
)

// The embedded server and its clients stop every goroutine they start
// when closed, so no goleak.Ignore options are needed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fast is the timing tests use.
var fast = etcdserver.Options{TickMs: 10, ElectionMs: 50, NoFsync: true}

func start(t *testing.T, opts etcdserver.Options) *etcdserver.Server {
	t.Helper()
	srv, err := etcdserver.Start(opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(srv.Close)
	return srv
}

func client(t *testing.T, url string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func port(t *testing.T, rawURL string) int {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStartServesClientsAndRemovesItsTempDir(t *testing.T) {
	srv, err := etcdserver.Start(fast)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(srv.ClientURL(), "http://127.0.0.1:") || port(t, srv.ClientURL()) == 0 {
		t.Fatalf("ClientURL = %q; want http://127.0.0.1:<port>", srv.ClientURL())
	}
	if srv.ClientURL() == srv.PeerURL() {
		t.Fatalf("client and peer URL are both %s", srv.ClientURL())
	}
	cli := client(t, srv.ClientURL())
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("Get = %v, %v; want v", resp, err)
	}
	dir := srv.Dir()
	srv.Close()
	srv.Close() // idempotent
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temp dir %s still there after Close (stat: %v)", dir, err)
	}
}

func TestRestartOnTheSameDirKeepsData(t *testing.T) {
	opts := fast
	opts.Dir = t.TempDir()
	first := start(t, opts)
	cli := client(t, first.ClientURL())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "kept"); err != nil {
		t.Fatal(err)
	}
	first.Close()
	if _, err := os.Stat(opts.Dir); err != nil {
		t.Fatalf("Close removed a data dir it did not create: %v", err)
	}

	opts.ClientPort, opts.PeerPort = port(t, first.ClientURL()), port(t, first.PeerURL())
	second := start(t, opts)
	if second.ClientURL() != first.ClientURL() {
		t.Fatalf("restarted on %s; want %s", second.ClientURL(), first.ClientURL())
	}
	// The first client reconnects by itself.
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "kept" {
		t.Fatalf("Get after restart = %v, %v; want kept", resp, err)
	}
}

// TestASecondServerOnADirInUseFailsAtOnce starts a server on the data
// directory of a running one: etcd would wait for its database's lock
// without end, past any ReadyTimeout.
func TestASecondServerOnADirInUseFailsAtOnce(t *testing.T) {
	opts := fast
	opts.Dir = t.TempDir()
	first := start(t, opts)
	startFailsAsDirInUse(t, opts, "the data directory of a running server")
	// The directory is the first server's still, and free once it is closed.
	cli := client(t, first.ClientURL())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("the first server after the second's attempt: %v", err)
	}
	first.Close()
	start(t, opts).Close()
}

// startFailsAsDirInUse starts a server with opts, whose directory is in
// use, and fails the test unless Start says so well before 10s.
func startFailsAsDirInUse(t *testing.T, opts etcdserver.Options, what string) {
	t.Helper()
	opts.ReadyTimeout = 2 * time.Second
	done := make(chan error, 1)
	go func() {
		srv, err := etcdserver.Start(opts)
		if err == nil {
			srv.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "data directory "+opts.Dir+" is in use") {
			t.Fatalf("Start = %v; want an error saying that data directory %s is in use", err, opts.Dir)
		}
		t.Log(err)
	case <-time.After(10 * time.Second):
		// The second server cannot be stopped: let the test binary end.
		t.Fatalf("Start on %s still waiting after 10s (ReadyTimeout %s)", what, opts.ReadyTimeout)
	}
}

func TestATakenPortIsAClearError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	hp := "127.0.0.1:" + strconv.Itoa(taken)
	for _, tc := range []struct {
		name  string
		opts  etcdserver.Options
		use   string // ListenError.Port
		want  string
		field string
	}{
		{"the client port", etcdserver.Options{ClientPort: taken}, "client", "for etcd clients", "Options.ClientPort to 0"},
		{"the peer port", etcdserver.Options{PeerPort: taken}, "peer", "for etcd peers", "Options.PeerPort to 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := etcdserver.Start(tc.opts)
			if err == nil {
				srv.Close()
				t.Fatalf("Start on taken port %d succeeded", taken)
			}
			if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), hp) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Start = %v; want an EADDRINUSE error naming %s %s and %s", err, hp, tc.want, tc.field)
			}
			var le *etcdserver.ListenError
			if !errors.As(err, &le) || le.Port != tc.use || le.Addr != hp {
				t.Errorf("Start = %v; want a ListenError for the %s port at %s (got %+v)", err, tc.use, hp, le)
			}
			t.Log(err)
		})
	}
}

func TestWhatStartCannotUseIsNamed(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts etcdserver.Options
		want []string
	}{
		{"a data directory under a file", etcdserver.Options{Dir: filepath.Join(file, "etcd")},
			[]string{"data directory " + filepath.Join(file, "etcd"), "not a directory", "writable directory"}},
		{"a data directory that is a file", etcdserver.Options{Dir: file},
			[]string{"data directory " + file, "writable directory"}},
		// 192.0.2.1 is TEST-NET-1, no machine's address.
		{"a host not of this machine", etcdserver.Options{Host: "192.0.2.1"},
			[]string{"192.0.2.1:0", "Host is not an address of this machine"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := etcdserver.Start(tc.opts)
			if err == nil {
				srv.Close()
				t.Fatal("Start succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Start = %q; it does not say %q", err, w)
				}
			}
		})
	}
}

func TestLoggerReceivesServerLines(t *testing.T) {
	var buf testutil.SyncBuffer
	opts := fast
	opts.Logger = slog.New(slog.NewTextHandler(&buf, nil))
	srv := start(t, opts)
	srv.Close()
	if out := buf.String(); !strings.Contains(out, "component=etcd-server") || !strings.Contains(out, "level=INFO") {
		t.Fatalf("log output lacks etcd's info lines:\n%.2000s", out)
	}
}

// etcd's own Close waits up to its request timeout (over 5s) for streams
// that clients keep open; Server.Close ends them, as a server that goes
// away would, so that clients reconnect rather than give up.
func TestCloseEndsOpenStreamsAtOnce(t *testing.T) {
	for range 5 {
		srv := start(t, fast)
		cli := client(t, srv.ClientURL())
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		wch := cli.Watch(ctx, "k")
		if _, err := cli.Put(ctx, "k", "v"); err != nil {
			t.Fatal(err)
		}
		<-wch
		lease, err := cli.Grant(ctx, 5)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.KeepAlive(ctx, lease.ID); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		srv.Close()
		if took := time.Since(start); took > time.Second {
			t.Fatalf("Close with open streams took %v", took)
		}
		select {
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				t.Fatalf("the watch ended (%v, %v); want it to wait for the server to come back", ok, wr.Err())
			}
		case <-time.After(100 * time.Millisecond):
		}
		cancel()
		cli.Close()
	}
}
