package e2e

import (
	"bytes"
	"context"
	"errors"
	"iter"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/config"
	_ "github.com/loomrt/loom/discovery/natskv"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// readmePermissions returns the NATS subjects README.md says a user needs
// to publish and subscribe to, from its nats-permissions block.
func readmePermissions(t *testing.T) (pub, sub []string) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(b), "<!-- nats-permissions:start -->")
	block, _, ok2 := strings.Cut(block, "<!-- nats-permissions:end -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no nats-permissions block")
	}
	for line := range strings.Lines(block) {
		if rest, ok := strings.CutPrefix(line, "publish:"); ok {
			pub = strings.Fields(rest)
		}
		if rest, ok := strings.CutPrefix(line, "subscribe:"); ok {
			sub = strings.Fields(rest)
		}
	}
	if len(pub) == 0 || len(sub) == 0 {
		t.Fatalf("README.md's nats-permissions block lists no publish or no subscribe subjects:\n%s", block)
	}
	return pub, sub
}

// refusals records the log lines that report a permission the NATS
// server refused.
type refusals struct {
	mu    sync.Mutex
	lines []string
}

func (r *refusals) Enabled(context.Context, slog.Level) bool { return true }
func (r *refusals) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	if line := b.String(); strings.Contains(strings.ToLower(line), "permission") {
		r.mu.Lock()
		r.lines = append(r.lines, line)
		r.mu.Unlock()
	}
	return nil
}
func (r *refusals) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *refusals) WithGroup(string) slog.Handler      { return r }

// TestALeastPrivilegedNATSUserRunsEveryPlane: processes whose NATS user
// may publish and subscribe to exactly what README.md lists (and one
// work queue's subjects) discover each other on NATS KV, call each other
// over the NATS request plane, publish and read events on Core NATS and
// on JetStream, and hand each other a job whose payload goes through the
// object store; the server refuses nothing.
func TestALeastPrivilegedNATSUserRunsEveryPlane(t *testing.T) {
	pub, sub := readmePermissions(t)
	pub = append(pub, "jobs.queue", "loom.dlq.jobs", "orders", "loom.dlq.events.orders.billing", "orders_js", "loom.dlq.events.orders_js.billing")
	sub = append(sub, "orders") // Core NATS only: a JetStream group pulls
	// Shut down after the runtimes' Shutdown, which unregisters through it.
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, Configure: func(o *natsserver.Options) {
		o.MaxPayload = 64 << 10 // so that a 100 KB job is offloaded
		o.Users = []*natsserver.User{{Username: "svc", Password: "pw", Permissions: &natsserver.Permissions{
			Publish:   &natsserver.SubjectPermission{Allow: pub},
			Subscribe: &natsserver.SubjectPermission{Allow: sub},
		}}}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	refused := &refusals{}
	runtime := func(eventsTransport string) *loom.Runtime {
		cfg := config.Default()
		cfg.NATS.URL, cfg.NATS.User, cfg.NATS.Password = ns.ClientURL(), "svc", "pw"
		cfg.Discovery.Backend = "natskv"
		cfg.RequestPlane.Transport = "nats"
		cfg.Client.LocalFastPath = false
		cfg.Events.Transport = eventsTransport
		cfg.Events.JetStream.Storage = "memory"
		cfg.Queue.Storage = "memory"
		return startRuntime(ctx, t, loom.WithConfig(cfg), loom.WithLogger(slog.New(refused)))
	}
	serving, caller := runtime("nats"), runtime("nats")

	t.Run("the request plane and discovery", func(t *testing.T) {
		ep, err := serving.Endpoint("perm/svc/echo")
		if err != nil {
			t.Fatal(err)
		}
		if err := loom.Serve(ctx, ep, loom.EngineFunc[string, string](func(_ context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) { yield("echo "+s, nil) }
		})); err != nil {
			t.Fatal(err)
		}
		cep, err := caller.Endpoint("perm/svc/echo")
		if err != nil {
			t.Fatal(err)
		}
		c, err := loom.NewClient[string, string](ctx, cep)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got, err := c.Call(ctx, "hi"); err != nil || got != "echo hi" {
			t.Fatalf("call: %q, %v", got, err)
		}
	})

	t.Run("events on Core NATS", func(t *testing.T) {
		s, err := events.Subscribe[int](ctx, caller, events.Scope{Namespace: "perm"}, "ticks")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		p, err := events.NewPublisher[int](ctx, serving, events.Scope{Namespace: "perm"}, "ticks")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		readEvent(ctx, t, s, func() error { return p.Publish(ctx, 7) })
	})

	t.Run("events on JetStream", func(t *testing.T) {
		rt := runtime("jetstream")
		s, err := events.Subscribe[int](ctx, rt, events.Scope{Namespace: "perm"}, "durable")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		p, err := events.NewPublisher[int](ctx, rt, events.Scope{Namespace: "perm"}, "durable")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		readEvent(ctx, t, s, func() error { return p.Publish(ctx, 7) })
	})

	t.Run("a work queue with an offloaded payload", func(t *testing.T) {
		in, err := workqueue.Open[[]byte](ctx, serving, workqueue.Config{Name: "jobs"})
		if err != nil {
			t.Fatal(err)
		}
		defer in.Shutdown(ctx)
		out, err := workqueue.Open[[]byte](ctx, caller, workqueue.Config{Name: "jobs"})
		if err != nil {
			t.Fatal(err)
		}
		defer out.Shutdown(ctx)
		big := bytes.Repeat([]byte("payload "), 8<<20/8) // enough chunks for JetStream to ask for flow control
		if err := in.Enqueue(ctx, big); err != nil {
			t.Fatal(err)
		}
		job, err := out.Dequeue(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(job.Value, big) {
			t.Fatalf("the job came back as %d bytes, want %d", len(job.Value), len(big))
		}
		if err := job.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		// And one dead-lettered, through the queue's dead-letter subject.
		if err := in.Enqueue(ctx, []byte("doomed")); err != nil {
			t.Fatal(err)
		}
		if job, err = out.Dequeue(ctx); err != nil {
			t.Fatal(err)
		}
		if err := job.Terminate(errors.New("refused on purpose")); err != nil {
			t.Fatalf("Terminate: %v", err)
		}
	})

	for _, mode := range []struct {
		name, topic string
		jetStream   bool
	}{{"on Core NATS", "orders", false}, {"on JetStream", "orders_js", true}} {
		t.Run("an EventBus topic with a dead letter "+mode.name, func(t *testing.T) {
			bus, err := eventbus.Open(ctx, caller, eventbus.Config{Queue: config.Queue{EventBusJetStream: mode.jetStream}})
			if err != nil {
				t.Fatal(err)
			}
			defer bus.Close()
			handled := make(chan struct{}, 1)
			if err := bus.RegisterConsumer("", mode.topic, "billing", eventbus.HandlerFunc(func(context.Context, *eventbus.Message) error {
				select {
				case handled <- struct{}{}:
				default:
				}
				return errors.New("refused on purpose")
			}), eventbus.WithMaxDeliver(1)); err != nil {
				t.Fatal(err)
			}
			p, err := bus.NewProducer("", mode.topic, "billing", 0)
			if err != nil {
				t.Fatal(err)
			}
			// A Core NATS group's queue subscription reaches the server
			// asynchronously: send until it has a message.
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
		wait:
			for {
				if err := p.Send(ctx, []byte("order")); err != nil {
					t.Fatal(err)
				}
				select {
				case <-handled:
					break wait
				case <-tick.C:
				case <-ctx.Done():
					t.Fatal("the message never reached the group")
				}
			}
			nc, err := caller.NATS(ctx)
			if err != nil {
				t.Fatal(err)
			}
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 20*time.Second, "the failed message in "+eventbus.DeadLetterStream(mode.topic), func() bool {
				st, err := js.Stream(ctx, eventbus.DeadLetterStream(mode.topic))
				return err == nil && st.CachedInfo().State.Msgs >= 1
			})
		})
	}

	refused.mu.Lock()
	defer refused.mu.Unlock()
	for _, line := range refused.lines {
		t.Errorf("the NATS server refused a permission: %s", line)
	}
}

// readEvent publishes with send until s yields the event: a Core NATS
// subscription reaches the server asynchronously.
func readEvent(ctx context.Context, t *testing.T, s *events.Subscription[int], send func() error) {
	t.Helper()
	got := make(chan int, 1)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		for ev, err := range s.Events(rctx) {
			if err != nil {
				return
			}
			got <- ev.Value
			return
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := send(); err != nil {
			t.Fatalf("publish: %v", err)
		}
		select {
		case v := <-got:
			if v != 7 {
				t.Fatalf("read %d, want 7", v)
			}
			return
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("the event never arrived")
		}
	}
}
