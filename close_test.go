package loom_test

import (
	"context"
	"errors"
	"iter"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom"
)

// blocking serves a handler that sends one item, then, for a request
// other than 0, reports on entered and waits until release is closed or
// its context ends (reported on killed).
type blocking struct {
	entered, killed, release chan struct{}
}

func newBlocking() *blocking {
	return &blocking{entered: make(chan struct{}, 16), killed: make(chan struct{}, 16), release: make(chan struct{})}
}

func (b *blocking) handler(ctx context.Context, n int) iter.Seq2[int, error] {
	return func(yield func(int, error) bool) {
		if n == 0 {
			yield(0, nil)
			return
		}
		if !yield(1, nil) {
			return
		}
		b.entered <- struct{}{}
		select {
		case <-b.release:
			yield(2, nil)
		case <-ctx.Done():
			b.killed <- struct{}{}
		}
	}
}

func TestClientShutdownWaitsForTheCallsInProgress(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		srv := c.runtime()
		b := newBlocking()
		serve(t, srv, "close/svc/block", b.handler)
		cl := client[int, int](t, c.runtime(), "close/svc/block")
		waitInstances(t, cl, 1)
		call := make(chan error, 1)
		go func() {
			got, err := collect(cl.Generate(context.Background(), 1))
			if err == nil && len(got) != 2 {
				err = errors.New("the call in progress did not get both items")
			}
			call <- err
		}()
		within(t, 20*time.Second, b.entered, "the handler starting")
		shutdown := make(chan error, 1)
		go func() { shutdown <- cl.Shutdown(context.Background()) }()
		deadline := time.Now().Add(20 * time.Second)
		for {
			_, err := collect(cl.Generate(context.Background(), 0))
			if errors.Is(err, loom.ErrClosed) {
				break
			}
			if err != nil || time.Now().After(deadline) {
				t.Fatalf("a new call during Shutdown: %v, want ErrClosed", err)
			}
			time.Sleep(time.Millisecond) // it ran before Shutdown began
		}
		select {
		case err := <-shutdown:
			t.Fatalf("Shutdown returned (%v) with a call in progress", err)
		default:
		}
		close(b.release)
		if err := <-call; err != nil {
			t.Fatalf("the call in progress: %v", err)
		}
		if err := <-shutdown; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	})
}

func TestClientShutdownPastItsContextSaysHowManyCallsWereLeft(t *testing.T) {
	c := newCluster(t)
	srv := c.runtime()
	b := newBlocking()
	defer close(b.release)
	serve(t, srv, "close/svc/block", b.handler)
	cl := client[int, int](t, c.runtime(), "close/svc/block")
	waitInstances(t, cl, 1)
	call := make(chan error, 1)
	go func() { _, err := collect(cl.Generate(context.Background(), 1)); call <- err }()
	within(t, 20*time.Second, b.entered, "the handler starting")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := cl.Shutdown(ctx)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "1 calls still in progress") {
		t.Fatalf("Shutdown: %v, want context.Canceled with the calls left", err)
	}
	b.release <- struct{}{}
	if err := <-call; err != nil {
		t.Fatalf("the call in progress after Shutdown gave up waiting: %v", err)
	}
	if _, err := collect(cl.Generate(context.Background(), 0)); !errors.Is(err, loom.ErrClosed) {
		t.Fatalf("a call after Shutdown: %v, want ErrClosed", err)
	}
}

func TestRuntimeAndEndpointCloseCancelTheRequestsInFlightAtOnce(t *testing.T) {
	for _, what := range []string{"runtime", "endpoint"} {
		t.Run(what, func(t *testing.T) {
			eachPlane(t, func(t *testing.T, c *cluster) {
				srv := c.runtime()
				b := newBlocking()
				ep := serve(t, srv, "close/svc/block", b.handler)
				cl := client[int, int](t, c.runtime(), "close/svc/block", loom.WithoutRetry())
				waitInstances(t, cl, 1)
				call := make(chan error, 1)
				go func() { _, err := collect(cl.Generate(context.Background(), 1)); call <- err }()
				within(t, 20*time.Second, b.entered, "the handler starting")
				var err error
				if what == "runtime" {
					err = srv.Close()
				} else {
					err = ep.Close()
				}
				if err != nil {
					t.Fatalf("Close: %v, want nil (cancelling is what Close does)", err)
				}
				within(t, 20*time.Second, b.killed, "the request in flight being cancelled")
				if err := <-call; err == nil {
					t.Fatal("the call in flight ended without an error")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				for len(cl.Instances()) != 0 {
					if ctx.Err() != nil {
						t.Fatal("the closed instance never left discovery")
					}
					time.Sleep(time.Millisecond)
				}
				if what == "runtime" {
					if err := srv.Close(); err != nil {
						t.Fatalf("a second Close: %v", err)
					}
					if err := srv.Shutdown(context.Background()); err != nil {
						t.Fatalf("Shutdown after Close: %v", err)
					}
				}
			})
		})
	}
}
