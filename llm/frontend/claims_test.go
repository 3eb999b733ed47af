package frontend_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/llm/frontend"
)

// TestMigrationWaitsOnceAndAtMostASecondForTheClientToLearnOfAWorker
// holds docs/llm.md's "Disconnects and migration": when the frontend knows
// a worker its client does not list yet, the re-issue waits for the client
// once, for up to a second, and then fails rather than waiting on.
func TestMigrationWaitsOnceAndAtMostASecondForTheClientToLearnOfAWorker(t *testing.T) {
	s, lag, migrating := laggingStack(t, 3)
	a := s.worker(workerOpts{pauseAfter: 3})
	s.waitReady(1)
	// Bounds the request if the frontend waited on and on.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp := post(t, ctx, s.url+"/v1/chat/completions", migBody)
	defer resp.Body.Close()
	sr := newSSEReader(t, resp)
	sr.words(3)
	// The client never learns of b: its view stays held for the rest of
	// the test, while the frontend's own view lists b.
	lag.hold()
	b := s.worker(workerOpts{})
	s.waitReady(2)
	killed := time.Now()
	a.kill()
	waitFor(t, migrating, "the migration to begin")
	migrated := time.Now()
	_, finish, e := sr.rest()
	took, waited := time.Since(killed), time.Since(migrated)
	if finish != "" || !strings.Contains(e, `"code":"no_worker"`) {
		t.Fatalf("stream ended with finish %q and error event %q; want a no_worker error once the wait ran out", finish, e)
	}
	if took < time.Second {
		t.Errorf("the stream failed %v after its worker was killed: the frontend did not wait a second for its client", took)
	}
	// The wait begins after the migration is logged. One wait of a
	// second, with room for a loaded machine: a second wait, or a longer
	// one, would take at least another second.
	if waited > 1900*time.Millisecond {
		t.Errorf("the stream failed %v after the migration began, want one wait of at most a second", waited)
	}
	if n := b.served.Load(); n != 0 {
		t.Errorf("the worker the client never listed served %d requests", n)
	}
}

// TestAStreamThatFailsAfterItsHeaderIsCountedWithItsErrorsStatus holds
// docs/llm.md's Metrics table: loom_llm_requests_total counts a stream that
// failed after its 200 header under the status of its error, not 200.
func TestAStreamThatFailsAfterItsHeaderIsCountedWithItsErrorsStatus(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   workerOpts
		kill   bool // kill the worker after its second token
		code   string
		status string
	}{
		{name: "a worker's error is a 500", opts: workerOpts{fail: errors.New("engine fault")}, code: "worker_error", status: "500"},
		{name: "the model's last worker dying is a 503", opts: workerOpts{pauseAfter: 2}, kill: true, code: "no_worker", status: "503"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, "tcp", frontend.Config{})
			w := s.worker(tc.opts)
			s.waitReady(1)
			resp := post(t, context.Background(), s.url+"/v1/chat/completions", migBody)
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want the stream to start with 200", resp.StatusCode)
			}
			if tc.kill {
				waitFor(t, w.paused, "the worker to stream two tokens")
				w.kill()
			}
			_, finish, e := collectSSE(t, resp)
			if finish != "" || !strings.Contains(e, `"code":"`+tc.code+`"`) {
				t.Fatalf("stream ended with finish %q and error event %q, want code %s", finish, e, tc.code)
			}
			want := `loom_llm_requests_total{model="test-model",status="` + tc.status + `"} 1`
			var metrics string
			testutil.Eventually(t, 20*time.Second, "the request to be counted with status "+tc.status, func() bool {
				resp, err := http.Get(s.url + "/metrics")
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				metrics = string(body)
				return strings.Contains(metrics, want)
			})
			if !strings.Contains(metrics, `loom_llm_requests_total{model="test-model",status="200"} 0`+"\n") {
				t.Errorf("the failed stream was also counted as a 200")
			}
		})
	}
}

// TestNoMigrationWhenMaxMigrationsIsNegative holds Config.MaxMigrations's
// "negative: never" (the CLI's --max-migrations 0): a request whose worker
// dies mid-stream ends with worker_failed at once, though another worker
// serves the model.
func TestNoMigrationWhenMaxMigrationsIsNegative(t *testing.T) {
	s := newStack(t, "tcp", frontend.Config{MaxMigrations: -1})
	a := s.worker(workerOpts{pauseAfter: 3})
	s.waitReady(1)
	resp := post(t, context.Background(), s.url+"/v1/chat/completions", migBody)
	defer resp.Body.Close()
	sr := newSSEReader(t, resp)
	sr.words(3)
	b := s.worker(workerOpts{})
	s.waitReady(2)
	a.kill()
	text, finish, e := sr.rest()
	if finish != "" || !strings.Contains(e, `"code":"worker_failed"`) {
		t.Fatalf("stream ended with %d words, finish %q and error event %s; want worker_failed", len(strings.Fields(text)), finish, e)
	}
	if m := resp.Trailer.Get(frontend.HeaderMigrations); m != "0" {
		t.Errorf("%s trailer = %q, want 0", frontend.HeaderMigrations, m)
	}
	if n := b.served.Load(); n != 0 {
		t.Errorf("the other worker served %d requests, want none", n)
	}
}
