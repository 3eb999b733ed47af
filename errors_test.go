package loom_test

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
)

// sentinels are the texts of the root's sentinels; each may appear in an
// error message at most once.
var sentinels = []error{
	loom.ErrNoInstances, loom.ErrDraining, loom.ErrOverloaded, loom.ErrStreamReset,
	loom.ErrHandlerPanic, loom.ErrClosed, loom.ErrUnreachable, loom.ErrTooLarge, loom.ErrRefused,
}

// saidOnce fails t if err's message says "loom:" or one of the sentinels'
// texts more than once.
func saidOnce(t *testing.T, err error) {
	t.Helper()
	msg := err.Error()
	if n := strings.Count(msg, "loom:"); n > 1 {
		t.Errorf("%q says \"loom:\" %d times", msg, n)
	}
	for _, s := range sentinels {
		text := strings.TrimPrefix(s.Error(), "loom: ")
		if n := strings.Count(msg, text); n > 1 {
			t.Errorf("%q says %q %d times", msg, text, n)
		}
	}
}

func TestAHandlerPanicReadsTheSameOnEveryPlane(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		srv := c.runtime()
		serve(t, srv, "errs/svc/panic", func(ctx context.Context, _ int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) { panic("boom") }
		})
		cl := client[int, int](t, c.runtime(), "errs/svc/panic")
		_, err := collect(cl.Generate(context.Background(), 1))
		want := fmt.Sprintf("loom: handler panicked: errs/svc/panic instance %x: boom", srv.ID())
		if !errors.Is(err, loom.ErrHandlerPanic) || err.Error() != want {
			t.Fatalf("err = %v\nwant %s", err, want)
		}
	})
}

func TestAHandlerPanicBehindInterceptorsReadsTheSame(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		srv := c.runtime()
		pass := loom.Interceptor(func(next loom.Engine[any, any]) loom.Engine[any, any] { return next })
		ep := endpoint(t, srv, "errs/svc/panic")
		eng := loom.EngineFunc[int, int](func(ctx context.Context, _ int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) { panic("boom") }
		})
		if err := loom.Serve(context.Background(), ep, eng, loom.WithServeInterceptors(pass)); err != nil {
			t.Fatal(err)
		}
		cl := client[int, int](t, c.runtime(), "errs/svc/panic")
		_, err := collect(cl.Generate(context.Background(), 1))
		want := fmt.Sprintf("loom: handler panicked: errs/svc/panic instance %x: boom", srv.ID())
		if !errors.Is(err, loom.ErrHandlerPanic) || err.Error() != want {
			t.Fatalf("err = %v\nwant %s", err, want)
		}
	})
}

func TestAStreamResetSaysSoOnce(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		srv := c.runtime()
		serve(t, srv, "errs/svc/reset", func(ctx context.Context, _ int) iter.Seq2[int, error] {
			return func(yield func(int, error) bool) {
				if yield(1, nil) {
					<-ctx.Done()
				}
			}
		})
		cl := client[int, int](t, c.runtime(), "errs/svc/reset")
		var err error
		shutDown := make(chan struct{})
		for item, e := range cl.Generate(context.Background(), 1) {
			if e != nil {
				err = e
				break
			}
			if item == 1 {
				// The grace period is over before it starts: the request
				// is cancelled under the caller.
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				go func() { defer close(shutDown); _ = srv.Shutdown(ctx) }()
			}
		}
		within(t, 20*time.Second, shutDown, "the server's shutdown")
		if !errors.Is(err, loom.ErrStreamReset) {
			t.Fatalf("err = %v, want ErrStreamReset", err)
		}
		if !strings.Contains(err.Error(), "errs/svc/reset instance") {
			t.Errorf("%q does not name the endpoint and instance", err)
		}
		saidOnce(t, err)
	})
}

func TestADrainingInstanceSaysSoOnce(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		lag := laggingDiscovery{Discovery: c.store.Connect(), release: make(chan struct{})}
		defer lag.Close()
		srv := c.runtime(loom.WithDiscovery(lag))
		ep := serve(t, srv, "errs/svc/drain", echoID(srv))
		cl := client[int, uint64](t, c.runtime(), "errs/svc/drain", loom.WithoutRetry())
		waitInstances(t, cl, 1)
		shutdown := make(chan error, 1)
		go func() { shutdown <- ep.Shutdown(context.Background()) }()
		deadline := time.Now().Add(20 * time.Second)
		var err error
		for {
			_, err = collect(cl.Generate(context.Background(), 1))
			if errors.Is(err, loom.ErrDraining) || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		close(lag.release)
		if e := <-shutdown; e != nil {
			t.Fatal(e)
		}
		if !errors.Is(err, loom.ErrDraining) {
			t.Fatalf("err = %v, want ErrDraining while the instance drains", err)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("errs/svc/drain instance %x", srv.ID())) {
			t.Errorf("%q does not name the endpoint and instance", err)
		}
		saidOnce(t, err)
	})
}

func TestAnUnreachableInstanceSaysSoOnce(t *testing.T) {
	c := newClusterOn(t, "tcp")
	dead := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	d := c.store.Connect()
	defer d.Close()
	inst := discovery.Instance{Namespace: "errs", Component: "svc", Endpoint: "gone", ID: 0x5eed, Transport: "tcp", Address: dead, Codec: "msgpack"}
	if err := d.Register(context.Background(), inst); err != nil {
		t.Fatal(err)
	}
	cl := client[int, uint64](t, c.runtime(), "errs/svc/gone", loom.WithoutRetry())
	waitInstances(t, cl, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var err error
	for ctx.Err() == nil {
		if _, err = collect(cl.Generate(ctx, 1)); errors.Is(err, loom.ErrUnreachable) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(err, loom.ErrUnreachable) || !strings.Contains(err.Error(), dead) {
		t.Fatalf("err = %v, want ErrUnreachable naming %s", err, dead)
	}
	saidOnce(t, err)
}

func TestACallerDeadlineBeforeTheWaitIsNoInstances(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		cl := client[int, int](t, c.runtime(), "errs/nobody/home", loom.WithWaitTimeout(time.Minute))
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := collect(cl.Generate(ctx, 1))
		if !errors.Is(err, loom.ErrNoInstances) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want ErrNoInstances wrapping the deadline", err)
		}
		if !strings.Contains(err.Error(), "errs/nobody/home") || !strings.Contains(err.Error(), "loom ls") {
			t.Errorf("%q should name the endpoint and say how to look", err)
		}
		saidOnce(t, err)
	})
}

func TestNewClientOnAShutDownRuntimeIsErrClosed(t *testing.T) {
	rt := newCluster(t).runtime()
	ep := endpoint(t, rt, "errs/late/client")
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := loom.NewClient[int, int](context.Background(), ep)
	if !errors.Is(err, loom.ErrClosed) || !strings.Contains(err.Error(), "errs/late/client") {
		t.Fatalf("err = %v, want ErrClosed naming the endpoint", err)
	}
	saidOnce(t, err)
}

func TestServeErrorsSayLoomOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tests := []struct {
		name string
		set  func(c *cluster)
		want string
	}{
		{"a port in use", func(c *cluster) { c.cfg.RequestPlane.Port = ln.Addr().(*net.TCPAddr).Port }, "request_plane.port"},
		{"a missing certificate", func(c *cluster) {
			c.cfg.RequestPlane.TLSCertFile, c.cfg.RequestPlane.TLSKeyFile = "/nonexistent/cert.pem", "/nonexistent/key.pem"
		}, "request_plane.tls_cert_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClusterOn(t, "tcp")
			tt.set(c)
			rt := c.runtime()
			err := loom.Serve(context.Background(), endpoint(t, rt, "errs/svc/serve"), loom.EngineFunc[int, uint64](echoID(rt)))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "loom: serve errs/svc/serve: ") {
				t.Fatalf("err = %v, want it to name the endpoint and %s", err, tt.want)
			}
			saidOnce(t, err)
		})
	}
}
