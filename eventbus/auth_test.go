package eventbus_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/eventbus"
	"github.com/loomrt/loom/internal/testutil"
)

func TestBusConnectsWithCozeStudioEnvironment(t *testing.T) {
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, Users: map[string]string{"coze": "pw"}})
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

// TestBusConnectsWithCozeStudioJWTAndSeed: NATS_JWT_TOKEN with
// NATS_NKEY_SEED, the seed given as itself, as a file holding it, or as a
// .creds file, as docs/queues.md says; a seed that is not the JWT's, or a
// path that names nothing, is an error naming the variables.
func TestBusConnectsWithCozeStudioJWTAndSeed(t *testing.T) {
	u := testutil.NewJWTUser(t)
	userJWT, seed := u.JWT, u.Seed
	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	dir := t.TempDir()
	seedFile := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedFile, append(seed, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(dir, "user.creds")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	ns := testutil.StartNATS(t, embedded.NATSOptions{Operator: u.Operator})
	for _, tc := range []struct {
		name, seed string
		want       []string // in the error; none: it connects
	}{
		{"the seed itself", string(seed), nil},
		{"a file holding the seed", seedFile, nil},
		{"a .creds file", credsFile, nil},
		{"another user's seed", string(otherSeed), []string{"NATS_JWT_TOKEN", "NATS_NKEY_SEED"}},
		{"a path that names nothing", filepath.Join(dir, "missing.nk"), []string{"NATS_NKEY_SEED", "missing.nk"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []string{eventbus.EnvUsername, eventbus.EnvPassword, eventbus.EnvToken, eventbus.EnvUseJetStream, eventbus.EnvStreamReplicas} {
				t.Setenv(v, "") // the shell's must not apply
			}
			t.Setenv(eventbus.EnvServerURL, ns.ClientURL())
			t.Setenv(eventbus.EnvJWTToken, userJWT)
			t.Setenv(eventbus.EnvNKeySeed, tc.seed)
			cfg, err := eventbus.ConfigFromEnv(config.Default())
			if err != nil {
				t.Fatal(err)
			}
			cfg.Logger = quiet
			cfg.NATS.ConnectTimeout = 2 * time.Second
			b := newBus(t, cfg)
			p, err := b.NewProducer("", "hello", "g", 0)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if err := p.Send(ctxFor(t, 5*time.Second), []byte("world")); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("NewProducer connected")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("NewProducer: %v; want it to say %q", err, w)
				}
			}
		})
	}
}

// TestACoreGroupRefusedItsSubscriptionIsAnError: a NATS user without
// subscribe permission on a topic gets an error from RegisterConsumer on
// Core NATS naming the topic and the permission, not a group that
// silently receives nothing (the server refuses the subscription only in
// an asynchronous error).
func TestACoreGroupRefusedItsSubscriptionIsAnError(t *testing.T) {
	ns := startNATS(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "coze", Password: "pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", "allowed.topic"}},
		}}}
	})
	cfg := busConfig(ns, false)
	cfg.NATS.User, cfg.NATS.Password = "coze", "pw"
	b := newBus(t, cfg)
	if err := b.RegisterConsumer("", "allowed.topic", "g", newCollector()); err != nil {
		t.Fatalf("a permitted topic: %v", err)
	}
	err := b.RegisterConsumer("", "orders.paid", "g", newCollector())
	if err == nil || !strings.Contains(err.Error(), "orders.paid") || !strings.Contains(err.Error(), "subscribe permission") {
		t.Fatalf("RegisterConsumer without subscribe permission: %v; want an error naming the topic and the permission", err)
	}
}

// TestASendTheServerRefusesIsAnError: a NATS user without publish
// permission on a topic gets an error from Send naming the topic and the
// permission. On Core NATS the server drops the message and says so only
// in an asynchronous error: Send once returned nil for a message nobody
// would ever get; on JetStream it failed after the ack timeout with "timeout
// waiting for ack", which named no cause.
func TestASendTheServerRefusesIsAnError(t *testing.T) {
	modes(t, func(t *testing.T, js bool) {
		ns := startNATS(t, func(o *server.Options) {
			o.Users = []*server.User{{Username: "coze", Password: "pw", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.>", "_INBOX.>", "allowed.topic"}},
				Subscribe: &server.SubjectPermission{Allow: []string{">"}},
			}}}
		})
		cfg := busConfig(ns, js)
		cfg.NATS.User, cfg.NATS.Password = "coze", "pw"
		b := newBus(t, cfg)
		ok, err := b.NewProducer("", "allowed.topic", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := ok.Send(ctxFor(t, 10*time.Second), []byte("x")); err != nil {
			t.Fatalf("a permitted topic: %v", err)
		}
		p, err := b.NewProducer("", "orders.paid", "", -1)
		if err != nil {
			t.Fatal(err)
		}
		err = p.Send(ctxFor(t, 20*time.Second), []byte("x"))
		if err == nil || !strings.Contains(err.Error(), "orders.paid") || !strings.Contains(err.Error(), "publish permission") {
			t.Fatalf("Send without publish permission: %v; want an error naming the topic and the permission", err)
		}
	})
}
