package config

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/natsplane"
)

func TestBackoffInitialAboveMaxIsAnError(t *testing.T) {
	_, err := Load(WithDirs(), mapEnv(map[string]string{"LOOM_QUEUE_BACKOFF_INITIAL": "2m", "LOOM_QUEUE_BACKOFF_MAX": "1m"}))
	if err == nil {
		t.Fatal("backoff_initial 2m above backoff_max 1m was accepted")
	}
	for _, want := range []string{"queue.backoff_initial", "2m0s", "env LOOM_QUEUE_BACKOFF_INITIAL", "queue.backoff_max (1m0s)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	c := Default()
	c.Queue.BackoffInitial, c.Queue.BackoffMax = 10e9, 1e9
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "queue.backoff_initial") {
		t.Errorf("Validate of backoff_initial above backoff_max = %v", err)
	}
}

// TestHeartbeatTimeoutsBelowWhatNATSServersHeartbeatAreRefused: a NATS
// plane server heartbeats at a third of the timeout its caller asks for,
// but at most every natsplane.MinHeartbeatInterval, so a shorter
// stall_timeout or keepalive_timeout fails or retries calls to servers
// that are working. Load refuses them, and takes 30ms and (for stall)
// negative values.
func TestHeartbeatTimeoutsBelowWhatNATSServersHeartbeatAreRefused(t *testing.T) {
	if want := 3 * natsplane.MinHeartbeatInterval; minHeartbeatTimeout != want {
		t.Fatalf("minHeartbeatTimeout = %v, want 3 × natsplane.MinHeartbeatInterval = %v", minHeartbeatTimeout, want)
	}
	s, _ := loadSchema()
	if got := s.byName["request_plane.keepalive_timeout"].Min; got != minHeartbeatTimeout.String() {
		t.Errorf("request_plane.keepalive_timeout min = %s, want %s", got, minHeartbeatTimeout)
	}
	refused := []struct{ env, value, want string }{
		{"LOOM_REQUEST_PLANE_STALL_TIMEOUT", "5ms", `config: request_plane.stall_timeout = "5ms" (from env LOOM_REQUEST_PLANE_STALL_TIMEOUT): below 30ms: NATS servers heartbeat at most every 10ms, so calls to servers that are working would be deemed frozen; write at least 30ms, or a negative duration such as -1s for off`},
		{"LOOM_REQUEST_PLANE_STALL_TIMEOUT", "29ms", `request_plane.stall_timeout = "29ms"`},
		{"LOOM_REQUEST_PLANE_KEEPALIVE_TIMEOUT", "10ms", `config: request_plane.keepalive_timeout = "10ms" (from env LOOM_REQUEST_PLANE_KEEPALIVE_TIMEOUT): must be at least 30ms`},
	}
	for _, tt := range refused {
		_, err := Load(WithDirs(), mapEnv(map[string]string{tt.env: tt.value}))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s=%s: err = %v, want one containing %s", tt.env, tt.value, err, tt.want)
		}
	}
	l, err := Load(WithDirs(), mapEnv(map[string]string{"LOOM_REQUEST_PLANE_STALL_TIMEOUT": "30ms", "LOOM_REQUEST_PLANE_KEEPALIVE_TIMEOUT": "30ms"}))
	if err != nil {
		t.Fatal(err)
	}
	if rp := l.Config.RequestPlane; rp.StallTimeout != 30*time.Millisecond || rp.KeepaliveTimeout != 30*time.Millisecond {
		t.Errorf("stall_timeout, keepalive_timeout = %v, %v, want 30ms each", rp.StallTimeout, rp.KeepaliveTimeout)
	}
	if _, err := Load(WithDirs(), mapEnv(map[string]string{"LOOM_REQUEST_PLANE_STALL_TIMEOUT": "-1ns"})); err != nil {
		t.Errorf("a negative stall_timeout (off) was refused: %v", err)
	}
	c := Default()
	c.RequestPlane.StallTimeout = time.Millisecond
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `config: request_plane.stall_timeout = "1ms": below 30ms`) {
		t.Errorf("Validate of stall_timeout 1ms = %v", err)
	}
}

// TestStreamAgesBelowWhatJetStreamKeepsAreRefused: nats-server refuses to
// create a stream (or object store) whose max age is below 100ms, so
// queue.max_age 50ms loaded and only workqueue.Open failed, with the
// server's error ("max age needs to be >= 100ms") naming no key. Load
// refuses such values; 0 and 100ms load.
func TestStreamAgesBelowWhatJetStreamKeepsAreRefused(t *testing.T) {
	for _, key := range []string{"queue.max_age", "queue.dead_letter_max_age", "queue.eventbus_max_age", "events.jetstream.max_age"} {
		t.Run(key, func(t *testing.T) {
			_, err := Load(WithDirs(), mapEnv(nil), WithValue(key, "50ms"))
			want := `config: ` + key + ` = "50ms" (from code): below 100ms: the NATS server creates no stream that keeps messages for less; write at least 100ms, or 0 to keep`
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("err = %v, want one containing %s", err, want)
			}
			for _, ok := range []string{"0s", "100ms"} {
				if _, err := Load(WithDirs(), mapEnv(nil), WithValue(key, ok)); err != nil {
					t.Errorf("%s = %s was refused: %v", key, ok, err)
				}
			}
		})
	}
}

// TestFloorsReadTheirKeys: each floor's getter reads the key it names.
func TestFloorsReadTheirKeys(t *testing.T) {
	for _, f := range floors {
		l, err := Load(WithDirs(), mapEnv(nil), WithValue(f.key, "1h"))
		if err != nil {
			t.Fatalf("%s: %v", f.key, err)
		}
		if got := f.get(&l.Config); got != time.Hour {
			t.Errorf("the floor of %s reads %v after setting it to 1h", f.key, got)
		}
	}
}

func TestUnknownLoomVariablesAreWarnedAbout(t *testing.T) {
	environ := func() []string {
		return []string{"LOOM_DISCOVRY=etcd", "LOOM_LOG_LEVEL=debug", "LOOM_CONFIG=/x", "LOOM_ZZZZZZZZZZZZZ=1", "PATH=/bin", "NATS_SERVER=nats://x"}
	}
	l, err := Load(WithDirs(), mapEnv(nil), func(l *loader) { l.environ = environ })
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Warnings) != 2 {
		t.Fatalf("warnings = %q, want one for LOOM_DISCOVRY and one for LOOM_ZZZZZZZZZZZZZ", l.Warnings)
	}
	if w := l.Warnings[0]; !strings.Contains(w, "LOOM_DISCOVRY") || !strings.Contains(w, "did you mean LOOM_DISCOVERY?") {
		t.Errorf("warning %q does not suggest LOOM_DISCOVERY", w)
	}
	if w := l.Warnings[1]; !strings.Contains(w, "LOOM_ZZZZZZZZZZZZZ") || !strings.Contains(w, "loom config") {
		t.Errorf("warning %q does not point at loom config", w)
	}
}

// TestTheTestToolsVariablesAreNotWarnedAbout sets the variables README.md
// has developers export for the -tags kube tests: no process they start
// afterwards may warn that they mean nothing.
func TestTheTestToolsVariablesAreNotWarnedAbout(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	environ := []string{"LOOM_KUBE_APISERVER=/cache/kube-apiserver", "LOOM_KUBECTL=/cache/kubectl"}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.Contains(string(readme), "export "+name+"=") {
			t.Errorf("README.md no longer has developers export %s; update this test", name)
		}
	}
	l, err := Load(WithDirs(), mapEnv(nil), func(l *loader) { l.environ = func() []string { return environ } })
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Warnings) != 0 {
		t.Errorf("warnings = %q, want none", l.Warnings)
	}
}
