package eventbus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/eventbus"
)

func TestBusConnectsWithCozeStudioEnvironment(t *testing.T) {
	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true, Users: map[string]string{"coze": "pw"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	t.Setenv(eventbus.EnvServerURL, ns.ClientURL())
	t.Setenv(eventbus.EnvUsername, "coze")
	t.Setenv(eventbus.EnvPassword, "pw")
	t.Setenv(eventbus.EnvUseJetStream, "true")
	cfg, err := eventbus.ConfigFromEnv(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = quiet
	cfg.Queue.Storage = "memory"
	b := newBus(t, cfg)
	got := make(chan string, 1)
	if err := b.RegisterConsumer("", "hello", "g", eventbus.HandlerFunc(func(ctx context.Context, m *eventbus.Message) error {
		got <- string(m.Body)
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	p, err := b.NewProducer("", "hello", "g", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Send(ctxFor(t, 5*time.Second), []byte("world")); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "world" {
		t.Fatalf("got %q", s)
	}

	t.Setenv(eventbus.EnvPassword, "wrong")
	cfg, _ = eventbus.ConfigFromEnv(config.Default())
	cfg.Logger = quiet
	bad := newBus(t, cfg)
	_, err = bad.NewProducer("", "hello", "g", 1)
	if !errors.Is(err, nats.ErrAuthorization) || !strings.Contains(err.Error(), "coze") {
		t.Fatalf("wrong password: %v; want an authorization error naming the user", err)
	}
}
