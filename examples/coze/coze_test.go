package coze_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/examples/coze"
)

// TestMain runs the package's tests with a nats-server that Coze's
// NATS_SERVER_URL names, as a Coze Studio deployment has, for Example,
// and checks that they leave no goroutine behind.
func TestMain(m *testing.M) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv(eventbus.EnvServerURL, ns.ClientURL())
	// The server needs no auth: the shell's Coze variables must not apply.
	for _, v := range []string{eventbus.EnvJWTToken, eventbus.EnvNKeySeed, eventbus.EnvUsername, eventbus.EnvPassword, eventbus.EnvToken} {
		os.Unsetenv(v)
	}
	code := m.Run()
	ns.Shutdown()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// The contract as Coze Studio declares it, method for method: the
// adapter's values must satisfy these.
type (
	cozeProducer interface {
		Send(ctx context.Context, body []byte, opts ...coze.SendOpt) error
		BatchSend(ctx context.Context, bodyArr [][]byte, opts ...coze.SendOpt) error
	}
	cozeConsumerHandler interface {
		HandleMessage(ctx context.Context, msg *coze.Message) error
	}
	cozeConsumerService interface {
		RegisterConsumer(nameServer, topic, group string, consumerHandler cozeConsumerHandler, opts ...coze.ConsumerOpt) error
	}
)

type handler func(context.Context, *coze.Message) error

func (h handler) HandleMessage(ctx context.Context, m *coze.Message) error { return h(ctx, m) }

var (
	_ cozeProducer                = coze.Producer(nil)
	_ cozeConsumerHandler         = handler(nil)
	_ func(string) coze.SendOpt   = coze.WithShardingKey
	_ func(bool) coze.ConsumerOpt = coze.WithConsumerOrderly
	_ cozeConsumerService         = contractService{}
	_                             = coze.Message{Topic: "", Group: "", Body: nil}
)

// contractService checks that coze.ConsumerService's method has the
// contract's signature.
type contractService struct{ coze.ConsumerService }

func (s contractService) RegisterConsumer(nameServer, topic, group string, h cozeConsumerHandler, opts ...coze.ConsumerOpt) error {
	return s.ConsumerService.RegisterConsumer(nameServer, topic, group, h, opts...)
}

func TestAdapterCarriesMessagesInOrderPerShardingKey(t *testing.T) {
	for _, js := range []bool{false, true} {
		t.Run(map[bool]string{false: "on Core NATS", true: "on JetStream"}[js], func(t *testing.T) {
			ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Shutdown()
			c := config.Default()
			c.NATS.URL = ns.ClientURL()
			q := c.Queue
			q.Storage, q.EventBusJetStream = "memory", js
			bus, err := eventbus.New(eventbus.Config{NATS: c.NATS, Queue: q, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := bus.Shutdown(ctx); err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			}()
			var svc cozeConsumerService = contractService{coze.NewConsumerService(bus)}
			var mu sync.Mutex
			var got []string
			done := make(chan struct{})
			const n = 20
			err = svc.RegisterConsumer("", "app_events", "indexer", handler(func(_ context.Context, m *coze.Message) error {
				mu.Lock()
				defer mu.Unlock()
				if m.Topic != "app_events" || m.Group != "indexer" {
					t.Errorf("message %+v", m)
				}
				if got = append(got, string(m.Body)); len(got) == n {
					close(done)
				}
				return nil
			}), coze.WithConsumerOrderly(true))
			if err != nil {
				t.Fatal(err)
			}
			var p cozeProducer
			if p, err = coze.NewProducer(bus, "", "app_events", "indexer", 3); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			bodies := make([][]byte, n)
			for i := range n {
				bodies[i] = []byte{byte('a' + i)}
			}
			if err := p.BatchSend(ctx, bodies[:n-1], coze.WithShardingKey("space-1")); err != nil {
				t.Fatal(err)
			}
			if err := p.Send(ctx, bodies[n-1], coze.WithShardingKey("space-1")); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
			case <-ctx.Done():
				t.Fatalf("got %d of %d messages", len(got), n)
			}
			mu.Lock()
			defer mu.Unlock()
			for i, b := range got {
				if b != string(bodies[i]) {
					t.Fatalf("message %d is %q, want %q: one sharding key, handled in order", i, b, bodies[i])
				}
			}
		})
	}
}

// TestANilHandlerIsRefused: RegisterConsumer with a nil handler is an
// error, as in Coze Studio's own consumers, not a group whose every
// message panics, is retried and is dead-lettered.
func TestANilHandlerIsRefused(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	c := config.Default()
	c.NATS.URL = ns.ClientURL()
	bus, err := eventbus.New(eventbus.Config{NATS: c.NATS, Queue: c.Queue, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	err = coze.NewConsumerService(bus).RegisterConsumer("", "app_events", "indexer", nil)
	if err == nil || !strings.Contains(err.Error(), "handler") {
		t.Fatalf("RegisterConsumer with a nil handler: %v; want an error naming the handler", err)
	}
}
