package eventbus

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/internal/testutil"
)

func TestConfigFromEnvMapsCozeStudioVariables(t *testing.T) {
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	base := config.Default()
	base.NATS.Token = "from-loom-config"
	tests := []struct {
		name    string
		env     map[string]string
		check   func(t *testing.T, c Config)
		wantErr string
	}{
		{"no variables keep Loom's configuration", nil, func(t *testing.T, c Config) {
			if c.NATS.Token != "from-loom-config" || c.Queue.EventBusJetStream {
				t.Errorf("got %+v", c.NATS)
			}
		}, ""},
		{"a cluster URL list and user/password", map[string]string{
			EnvServerURL: "nats://n1:4222,tls://n2:4222", EnvUsername: "coze", EnvPassword: "pw",
		}, func(t *testing.T, c Config) {
			if c.NATS.URL != "nats://n1:4222,tls://n2:4222" || c.NATS.User != "coze" || c.NATS.Password != "pw" || c.NATS.Token != "" {
				t.Errorf("got %+v", c.NATS)
			}
		}, ""},
		{"a token", map[string]string{EnvToken: "s3cret"}, func(t *testing.T, c Config) {
			if c.NATS.Token != "s3cret" {
				t.Errorf("got %+v", c.NATS)
			}
		}, ""},
		{"a JWT with its seed", map[string]string{EnvJWTToken: "eyJ.jwt", EnvNKeySeed: string(seed)}, func(t *testing.T, c Config) {
			if c.JWT != "eyJ.jwt" || c.Seed != string(seed) || c.NATS.Token != "" {
				t.Errorf("got JWT %q seed %q token %q", c.JWT, c.Seed, c.NATS.Token)
			}
		}, ""},
		{"a seed alone is NKey auth", map[string]string{EnvNKeySeed: string(seed)}, func(t *testing.T, c Config) {
			if c.NATS.NKey != string(seed) {
				t.Errorf("got %+v", c.NATS)
			}
		}, ""},
		{"replicas and JetStream", map[string]string{EnvStreamReplicas: "3", EnvUseJetStream: "true"}, func(t *testing.T, c Config) {
			if c.Queue.Replicas != 3 || !c.Queue.EventBusJetStream {
				t.Errorf("got replicas %d jetstream %v", c.Queue.Replicas, c.Queue.EventBusJetStream)
			}
		}, ""},
		{"a JWT without its seed", map[string]string{EnvJWTToken: "eyJ.jwt"}, nil, "NATS_NKEY_SEED is empty"},
		{"two auth modes", map[string]string{EnvToken: "t", EnvUsername: "u"}, nil, "NATS_USERNAME and NATS_PASSWORD, NATS_TOKEN"},
		{"bad replicas", map[string]string{EnvStreamReplicas: "three"}, nil, `NATS_STREAM_REPLICAS="three"`},
		{"bad JetStream switch", map[string]string{EnvUseJetStream: "yes please"}, nil, `NATS_USE_JETSTREAM="yes please"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			c, err := configFromEnv(base, lookup)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

// A server that cannot be reached is named with the variable that gave
// its URL, not Loom's nats.url or NATS_SERVER, which a Coze deployment
// does not set.
func TestAnUnreachableServerNamesNATSServerURL(t *testing.T) {
	dead := fmt.Sprintf("nats://127.0.0.1:%d", testutil.FreePort(t)) // nothing listens there
	base := config.Default()
	base.NATS.ConnectTimeout = 500 * time.Millisecond
	cfg, err := configFromEnv(base, func(k string) (string, bool) {
		if k == EnvServerURL {
			return dead, true
		}
		return "", false
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.NewProducer("", "topic", "group", 0)
	if err == nil || !strings.Contains(err.Error(), "check NATS_SERVER_URL,") {
		t.Fatalf("NewProducer with %s down: %v; want an error saying to check NATS_SERVER_URL", EnvServerURL, err)
	}
}
