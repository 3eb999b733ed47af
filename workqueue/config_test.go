package workqueue_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/workqueue"
)

func TestBadConfigIsRefusedNamingTheSettingAndWhatToUse(t *testing.T) {
	_, nc := startNATS(t, nil)
	cases := []struct {
		name string
		edit func(*workqueue.Config)
		want []string // in the error
	}{
		{"a queue name with a dot", func(c *workqueue.Config) { c.Name = "jobs.a" }, []string{`"jobs.a"`, "letters, digits"}},
		{"a subject with a wildcard", func(c *workqueue.Config) { c.Subject = "jobs.*" }, []string{`"jobs.*"`, "wildcards"}},
		{"a subject with a full wildcard", func(c *workqueue.Config) { c.Subject = "jobs.>" }, []string{`"jobs.>"`, "wildcards"}},
		{"a subject with a space", func(c *workqueue.Config) { c.Subject = "my jobs" }, []string{`"my jobs"`, "spaces"}},
		{"a subject with an empty token", func(c *workqueue.Config) { c.Subject = "jobs..a" }, []string{`"jobs..a"`, "dot-separated"}},
		{"a subject that is not UTF-8", func(c *workqueue.Config) { c.Subject = "jobs.\xff" }, []string{`"jobs.\xff"`, "UTF-8"}},
		{"a subject with a NUL", func(c *workqueue.Config) { c.Subject = "jobs.a\x00b" }, []string{`"jobs.a\x00b"`, "control characters"}},
		{"a subject with a control character", func(c *workqueue.Config) { c.Subject = "jobs.\x7f" }, []string{`"jobs.\x7f"`, "control characters"}},
		{"a queue name that is not UTF-8", func(c *workqueue.Config) { c.Name = "jobs\xff" }, []string{`"jobs\xff"`, "letters, digits"}},
		{"a group with a NUL", func(c *workqueue.Config) { c.Group = "w\x00" }, []string{`"w\x00"`, "letters, digits"}},
		{"a group with a dot", func(c *workqueue.Config) { c.Group = "w.1" }, []string{`"w.1"`, "letters, digits"}},
		{"a negative jitter", func(c *workqueue.Config) { c.BackoffJitter = -0.1 }, []string{"BackoffJitter -0.1", "0 to 1"}},
		{"a jitter above 1", func(c *workqueue.Config) { c.BackoffJitter = 1.5 }, []string{"BackoffJitter 1.5", "0 to 1"}},
		{"a jitter that is not a number", func(c *workqueue.Config) { c.BackoffJitter = math.NaN() }, []string{"BackoffJitter NaN", "0 to 1"}},
	}
	taken := testConfig(t)
	newQueue[job](t, nc, taken)
	cases = append(cases, struct {
		name string
		edit func(*workqueue.Config)
		want []string
	}{"a subject another queue takes", func(c *workqueue.Config) { c.Subject = taken.Name + ".queue" }, []string{"subject " + taken.Name + ".queue is taken", "Config.Subject"}})
	for _, c := range cases {
		t.Run(c.name+" is refused", func(t *testing.T) {
			cfg := testConfig(t)
			c.edit(&cfg)
			q, err := workqueue.New[job](context.Background(), nc, cfg)
			if err == nil {
				q.Close()
				t.Fatalf("New accepted %+v", cfg)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestBadConsumeOptionsAreRefusedNamingTheOption(t *testing.T) {
	_, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	h := workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error { return nil })
	cases := []struct {
		name string
		opt  workqueue.ConsumeOption
		want []string
	}{
		{"no handlers", workqueue.WithConcurrency(0), []string{"WithConcurrency(0)", "1 to 100000"}},
		{"a negative concurrency", workqueue.WithConcurrency(-4), []string{"WithConcurrency(-4)", "1 to 100000"}},
		{"more handlers than queue.concurrency allows", workqueue.WithConcurrency(10_000_000), []string{"WithConcurrency(10000000)", "1 to 100000"}},
		{"a negative prefetch", workqueue.WithPrefetch(-1), []string{"WithPrefetch(-1)", "0 "}},
		{"a negative pull expiry", workqueue.WithPullExpiry(-time.Second), []string{"WithPullExpiry(-1s)", "at least 1s"}},
		{"a pull expiry under a second", workqueue.WithPullExpiry(100 * time.Millisecond), []string{"WithPullExpiry(100ms)", "at least 1s"}},
	}
	for _, c := range cases {
		t.Run(c.name+" is refused", func(t *testing.T) {
			cons, err := q.Consume(h, c.opt)
			if err == nil {
				_ = cons.Close()
				t.Fatal("Consume accepted it")
			}
			if err := q.Run(context.Background(), h, c.opt); err == nil {
				t.Fatal("Run accepted it")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}
