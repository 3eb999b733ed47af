package embedded_test

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/embedded"

	"github.com/loomrt/loom/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func connect(t *testing.T, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func TestStartNATSWithJetStreamStoresAndRemovesItsTempDir(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	store := ns.Server().StoreDir()
	if _, err := os.Stat(store); err != nil {
		t.Fatalf("store dir %q: %v", store, err)
	}

	nc := connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "jobs", Subjects: []string{"jobs.>"}}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx, "jobs.a", []byte("x")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	nc.Close()

	ns.Shutdown()
	ns.Shutdown() // idempotent
	if _, err := os.Stat(filepath.Dir(store)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temp store %q still there after Shutdown (stat: %v)", filepath.Dir(store), err)
	}
}

func TestStartNATSKeepsAGivenStoreDir(t *testing.T) {
	dir := t.TempDir()
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ns.Shutdown()
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("given store dir removed: %v", err)
	}
}

func TestTwoServersOnRandomPortsAtOnce(t *testing.T) {
	var wg sync.WaitGroup
	servers := make([]*embedded.NATS, 2)
	errs := make([]error, 2)
	for i := range servers {
		wg.Go(func() { servers[i], errs[i] = embedded.StartNATS(embedded.NATSOptions{JetStream: true}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("server %d: %v", i, err)
		}
		t.Cleanup(servers[i].Shutdown)
	}
	if servers[0].ClientURL() == servers[1].ClientURL() {
		t.Fatalf("both servers on %s", servers[0].ClientURL())
	}
	for _, ns := range servers {
		if strings.HasSuffix(ns.ClientURL(), ":4222") || strings.HasSuffix(ns.ClientURL(), ":-1") {
			t.Errorf("ClientURL %s is not a random port", ns.ClientURL())
		}
		nc := connect(t, ns.ClientURL())
		if err := nc.Flush(); err != nil {
			t.Errorf("flush to %s: %v", ns.ClientURL(), err)
		}
	}
}

func TestStartNATSOnATakenPortNamesThePort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	hp := "127.0.0.1:" + strconv.Itoa(port)

	for _, tc := range []struct {
		name  string
		opts  embedded.NATSOptions
		use   string // ListenError.Port
		field string // what the hint says to set
	}{
		{"the client port", embedded.NATSOptions{Port: port, JetStream: true}, "client", "NATSOptions.Port to 0"},
		{"the monitoring port", embedded.NATSOptions{MonitorPort: port, JetStream: true}, "monitoring", "NATSOptions.MonitorPort to -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			begin := time.Now()
			ns, err := embedded.StartNATS(tc.opts)
			if err == nil {
				ns.Shutdown()
				t.Fatal("StartNATS on a taken port succeeded")
			}
			if d := time.Since(begin); d > 2*time.Second {
				t.Errorf("failure took %s; want it fast", d)
			}
			var le *embedded.ListenError
			if !errors.As(err, &le) || le.Port != tc.use || le.Addr != hp {
				t.Errorf("error %q is not a ListenError for the %s port at %s (got %+v)", err, tc.use, hp, le)
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("error %q is not EADDRINUSE", err)
			}
			if msg := err.Error(); !strings.Contains(msg, hp) || !strings.Contains(msg, tc.use+" port") || !strings.Contains(msg, tc.field) {
				t.Errorf("error %q does not name %s, its %s port, and %s", msg, hp, tc.use, tc.field)
			}
			t.Log(err)
		})
	}
}

func TestStartNATSRefusesWhatItCannotListenOnOrWriteTo(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts embedded.NATSOptions
		want []string
	}{
		{"a store directory under a file", embedded.NATSOptions{JetStream: true, StoreDir: filepath.Join(file, "store")},
			[]string{filepath.Join(file, "store"), "not a directory", "writable directory"}},
		{"a store directory that is a file", embedded.NATSOptions{JetStream: true, StoreDir: file},
			[]string{file, "writable directory"}},
		{"a client port above 65535", embedded.NATSOptions{Port: 70000}, []string{"NATSOptions.Port 70000", "65535"}},
		{"a monitoring port above 65535", embedded.NATSOptions{MonitorPort: 70000}, []string{"NATSOptions.MonitorPort 70000", "65535"}},
		// 192.0.2.1 is TEST-NET-1, no machine's address.
		{"a host not of this machine", embedded.NATSOptions{Host: "192.0.2.1"}, []string{"192.0.2.1:0", "Host is not an address of this machine"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, err := embedded.StartNATS(tc.opts)
			if err == nil {
				ns.Shutdown()
				t.Fatal("StartNATS succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "another process") {
				t.Errorf("error %q blames another process", err)
			}
		})
	}
}

func TestMonitorPort(t *testing.T) {
	t.Run("is off by default", func(t *testing.T) {
		if u := testutil.StartNATS(t, embedded.NATSOptions{}).MonitorURL(); u != "" {
			t.Errorf("MonitorURL = %q, want empty", u)
		}
	})
	t.Run("serves varz on a random port", func(t *testing.T) {
		ns := testutil.StartNATS(t, embedded.NATSOptions{MonitorPort: -1})
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Get(ns.MonitorURL() + "/varz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET /varz: %s", resp.Status)
		}
	})
}

func TestAuthModes(t *testing.T) {
	t.Run("user and password", func(t *testing.T) {
		ns := testutil.StartNATS(t, embedded.NATSOptions{Users: map[string]string{"bob": "s3cret"}})
		connect(t, ns.ClientURL(), nats.UserInfo("bob", "s3cret"))
		if _, err := nats.Connect(ns.ClientURL(), nats.UserInfo("bob", "wrong")); !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("wrong password: err = %v, want authorization violation", err)
		}
	})
	t.Run("token", func(t *testing.T) {
		ns := testutil.StartNATS(t, embedded.NATSOptions{Token: "tok"})
		connect(t, ns.ClientURL(), nats.Token("tok"))
		if _, err := nats.Connect(ns.ClientURL()); !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("no token: err = %v, want authorization violation", err)
		}
	})
	t.Run("operator JWTs without a system account", func(t *testing.T) {
		u := testutil.NewJWTUser(t)
		ns := testutil.StartNATS(t, embedded.NATSOptions{Operator: u.Operator})
		connect(t, ns.ClientURL(), nats.UserJWTAndSeed(u.JWT, string(u.Seed)))
		if _, err := nats.Connect(ns.ClientURL()); !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("no JWT: err = %v, want authorization violation", err)
		}
	})
	t.Run("token and users together is an error", func(t *testing.T) {
		_, err := embedded.StartNATS(embedded.NATSOptions{Token: "tok", Users: map[string]string{"a": "b"}})
		if err == nil {
			t.Fatal("want an error")
		}
	})
}

func TestInProcessConnection(t *testing.T) {
	ns := testutil.StartNATS(t, embedded.NATSOptions{Configure: func(o *server.Options) { o.DontListen = true }})
	nc := connect(t, "", nats.InProcessServer(ns))
	if _, err := nc.Subscribe("ping", func(m *nats.Msg) { _ = m.Respond([]byte("pong")) }); err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request("ping", nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(msg.Data) != "pong" {
		t.Errorf("reply %q, want pong", msg.Data)
	}
}

func TestLoggerReceivesServerLines(t *testing.T) {
	var buf testutil.SyncBuffer
	ns := testutil.StartNATS(t, embedded.NATSOptions{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	ns.Shutdown()
	if !strings.Contains(buf.String(), "Server is ready") {
		t.Errorf("log lacks the server's ready line:\n%s", buf.String())
	}
}

func TestQuietByDefault(t *testing.T) {
	var buf testutil.SyncBuffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(old)
	testutil.StartNATS(t, embedded.NATSOptions{}).Shutdown()
	if buf.Len() != 0 {
		t.Errorf("server logged without a Logger:\n%s", buf.String())
	}
}

func ExampleStartNATS() {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ns.Shutdown()

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	sub, _ := nc.SubscribeSync("greetings")
	_ = nc.Publish("greetings", []byte("hello from an embedded nats-server"))
	msg, err := sub.NextMsg(time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(msg.Data))
	// Output: hello from an embedded nats-server
}

// TestASecondServerOnAStoreDirInUseFailsAtOnce starts a server on the
// JetStream store of a running one: nats-server would share it, each
// overwriting what the other wrote.
func TestASecondServerOnAStoreDirInUseFailsAtOnce(t *testing.T) {
	dir := t.TempDir()
	first := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, StoreDir: dir})
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true, StoreDir: dir})
	if err == nil {
		ns.Shutdown()
		t.Fatal("a second server on the store directory of a running one started")
	}
	if !errors.Is(err, embedded.ErrStoreDirInUse) || !strings.Contains(err.Error(), "store directory "+dir+" is in use") {
		t.Fatalf("StartNATS = %v; want ErrStoreDirInUse naming %s", err, dir)
	}
	t.Log(err)
	first.Shutdown()
	testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, StoreDir: dir}).Shutdown()
}
