package config

import (
	"os"
	"strings"
	"testing"
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
