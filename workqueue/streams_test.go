package workqueue_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/objectstore"
	"github.com/loomrt/loom/workqueue"
)

// TestStreamLimitsAnOperatorSetAreKept edits a queue's stream as an
// operator would (nats stream edit --max-msgs=1000), starts the producer
// again, and finds the limit kept and a warning naming it.
func TestStreamLimitsAnOperatorSetAreKept(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	newQueue[job](t, nc, cfg)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 10*time.Second)
	for _, name := range []string{cfg.Name, cfg.Name + "_dlq"} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		edited := s.CachedInfo().Config
		edited.MaxMsgs = 1000
		if _, err := js.UpdateStream(ctx, edited); err != nil {
			t.Fatal(err)
		}
	}
	var logs testutil.SyncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	newQueue[job](t, nc, cfg) // the producer restarts
	for _, name := range []string{cfg.Name, cfg.Name + "_dlq"} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.MaxMsgs; got != 1000 {
			t.Errorf("stream %s: max_msgs %d after a restart, want the operator's 1000", name, got)
		}
		if !strings.Contains(logs.String(), "stream "+name+" exists with settings that differ") {
			t.Errorf("no warning about stream %s; logs:\n%s", name, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "max_msgs 1000 (configured unlimited)") {
		t.Errorf("the warning does not name the difference; logs:\n%s", logs.String())
	}
}

// TestQueueAdoptsTheStreamTheSeedCreates starts a Loom worker on the
// stream the seed's NATSQueue creates (limits retention, subjects
// name.*), with a warning saying what changes, and the worker handles the
// seed's JSON jobs.
func TestQueueAdoptsTheStreamTheSeedCreates(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	js, _ := nc.JetStream()
	if _, err := js.AddStream(&nats.StreamConfig{Name: cfg.Name, Subjects: []string{cfg.Name + ".*"}}); err != nil {
		t.Fatal(err)
	}
	var logs testutil.SyncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	cfg.Codec = codec.JSON
	q := newQueue[job](t, nc, cfg)
	if !strings.Contains(logs.String(), "adopts stream "+cfg.Name) || !strings.Contains(logs.String(), "Limits retention") {
		t.Fatalf("no adoption warning; logs:\n%s", logs.String())
	}
	for i := range 3 {
		b, _ := json.Marshal(job{ID: i})
		if _, err := js.Publish(cfg.Name+".queue", b); err != nil {
			t.Fatal(err)
		}
	}
	// Another subject of the seed's stream is not the queue's.
	if _, err := js.Publish(cfg.Name+".other", []byte("not a job")); err != nil {
		t.Fatal(err)
	}
	got := make(chan int, 10)
	consume(t, q, func(_ context.Context, j *workqueue.Job[job]) error {
		got <- j.Value.ID
		return nil
	})
	seen := map[int]bool{}
	for len(seen) < 3 {
		select {
		case id := <-got:
			seen[id] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("handled %v of the seed's 3 jobs", seen)
		}
	}
}

// TestJSONJobsInAMsgPackQueueSayWhatToSet checks the decoding error of a
// JSON job met by a queue with the default codec.
func TestJSONJobsInAMsgPackQueueSayWhatToSet(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.MaxDeliver = 1
	q := newQueue[job](t, nc, cfg)
	js, _ := nc.JetStream()
	if _, err := js.Publish(cfg.Name+".queue", []byte(`{"id": 7}`)); err != nil {
		t.Fatal(err)
	}
	consume(t, q, func(context.Context, *workqueue.Job[job]) error { return nil })
	ctx := ctxFor(t, 10*time.Second)
	var dl []workqueue.DeadLetter
	testutil.Eventually(t, 10*time.Second, "the JSON job is dead-lettered", func() bool {
		var err error
		admin, err := workqueue.NewAdmin(nc)
		if err != nil {
			return false
		}
		dl, err = admin.DeadLetters(ctx, cfg.Name, 10)
		return err == nil && len(dl) == 1
	})
	if !strings.Contains(dl[0].Error, "looks like JSON; set queue.codec=json") {
		t.Fatalf("dead letter's error %q does not say what to set", dl[0].Error)
	}
}

// TestAdminAddOffloadsLikeEnqueue adds a job above max_payload with Admin
// (what `loom queue add` calls): it goes to the object store, and the
// worker gets it whole.
func TestAdminAddOffloadsLikeEnqueue(t *testing.T) {
	_, nc := startNATS(t, func(o *server.Options) { o.MaxPayload = 32 << 10 })
	cfg := testConfig(t)
	q := newQueue[[]byte](t, nc, cfg)
	admin, err := workqueue.NewAdmin(nc)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 100<<10)
	raw, _ := json.Marshal(big)
	ctx := ctxFor(t, 20*time.Second)
	if _, err := admin.Add(ctx, cfg.Name, raw, ""); err != nil {
		t.Fatalf("Admin.Add of %d bytes over a max_payload of 32 KiB: %v", len(big), err)
	}
	got := make(chan int, 1)
	consume(t, q, func(_ context.Context, j *workqueue.Job[[]byte]) error {
		got <- len(j.Value)
		return nil
	})
	select {
	case n := <-got:
		if n != len(big) {
			t.Fatalf("worker got %d bytes, want %d", n, len(big))
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the offloaded job never arrived")
	}
	// Past the object size limit Add refuses, naming size and limit.
	cfg2 := testConfig(t)
	cfg2.LargePayloads = "reject"
	newQueue[[]byte](t, nc, cfg2)
	_, err = admin.Add(ctx, cfg2.Name, raw, "")
	var tooLarge *objectstore.TooLargeError
	if !errors.As(err, &tooLarge) || !strings.Contains(err.Error(), "32768") {
		t.Fatalf("Admin.Add on a queue with large_payloads=reject: %v; want a TooLargeError naming the limit", err)
	}
}

// TestNewCreatesTheStreamsTheDocsDescribe holds docs/queues.md's "The
// streams": the queue's stream on <name>.queue with WorkQueue retention,
// DiscardNew (a full queue refuses a job with the server's error, which
// Enqueue retries until its deadline, rather than dropping one), the
// configured limits, a 2-minute duplicate window and loom.kind=queue; the
// dead-letter stream <name>_dlq on loom.dlq.<name> with limits retention
// kept for dead_letter_max_age; and the consumer worker-group, made by the
// first Dequeue and not by a producer, with no server-side MaxDeliver.
func TestNewCreatesTheStreamsTheDocsDescribe(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.MaxMsgs = 2
	q := newQueue[job](t, nc, cfg)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 20*time.Second)
	s, err := js.Stream(ctx, cfg.Name)
	if err != nil {
		t.Fatal(err)
	}
	sc := s.CachedInfo().Config
	if len(sc.Subjects) != 1 || sc.Subjects[0] != cfg.Name+".queue" || sc.Retention != jetstream.WorkQueuePolicy ||
		sc.Discard != jetstream.DiscardNew || sc.MaxMsgs != 2 || sc.Duplicates != 2*time.Minute || sc.Metadata["loom.kind"] != "queue" {
		t.Errorf("queue stream: subjects %v, retention %v, discard %v, max_msgs %d, duplicates %v, metadata %v; want [%s.queue], WorkQueue, DiscardNew, 2, 2m0s, loom.kind=queue",
			sc.Subjects, sc.Retention, sc.Discard, sc.MaxMsgs, sc.Duplicates, sc.Metadata, cfg.Name)
	}
	d, err := js.Stream(ctx, cfg.Name+"_dlq")
	if err != nil {
		t.Fatal(err)
	}
	dc := d.CachedInfo().Config
	if len(dc.Subjects) != 1 || dc.Subjects[0] != "loom.dlq."+cfg.Name || dc.Retention != jetstream.LimitsPolicy || dc.MaxAge != 720*time.Hour {
		t.Errorf("dead-letter stream: subjects %v, retention %v, max_age %v; want [loom.dlq.%s], Limits, 720h0m0s (dead_letter_max_age)",
			dc.Subjects, dc.Retention, dc.MaxAge, cfg.Name)
	}

	for i := range 2 {
		if err := q.Enqueue(ctx, job{ID: i}); err != nil {
			t.Fatal(err)
		}
	}
	full, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := q.Enqueue(full, job{ID: 2}); err == nil || !strings.Contains(err.Error(), "maximum messages exceeded") {
		t.Errorf("enqueue to a full queue: %v; want the server's refusal (maximum messages exceeded)", err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 2 {
		t.Errorf("the full queue holds %+v, %v; want its 2 first jobs, none dropped", info.State, err)
	}

	if _, err := js.Consumer(ctx, cfg.Name, "worker-group"); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("consumer after enqueueing only: %v; want none (producers never touch it)", err)
	}
	j, err := q.Dequeue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if j.Value.ID != 0 {
		t.Errorf("dequeued job %d, want 0", j.Value.ID)
	}
	if err := j.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := js.Consumer(ctx, cfg.Name, "worker-group")
	if err != nil {
		t.Fatal(err)
	}
	cc := c.CachedInfo().Config
	if cc.MaxDeliver != -1 || cc.AckPolicy != jetstream.AckExplicitPolicy || cc.FilterSubject != cfg.Name+".queue" {
		t.Errorf("consumer: max_deliver %d, ack %v, filter %q; want -1 (Loom counts attempts), explicit, %s.queue", cc.MaxDeliver, cc.AckPolicy, cc.FilterSubject, cfg.Name)
	}
}

// TestAMaxAgeShorterThanTheDuplicateWindowIsTaken: nats-server refuses a
// stream whose duplicate window exceeds its max age, so a queue with a
// max age (or a dead-letter max age) under the two-minute default window
// failed to start. The window is cut to the stream's max age, as the
// server itself does when a stream names no window.
func TestAMaxAgeShorterThanTheDuplicateWindowIsTaken(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.MaxAge = time.Minute
	cfg.DeadLetterMaxAge = 30 * time.Second
	newQueue[job](t, nc, cfg)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 20*time.Second)
	for name, want := range map[string]time.Duration{cfg.Name: time.Minute, cfg.Name + "_dlq": 30 * time.Second} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if sc := s.CachedInfo().Config; sc.MaxAge != want || sc.Duplicates != want {
			t.Errorf("stream %s: max_age %v, duplicate window %v; want both %v", name, sc.MaxAge, sc.Duplicates, want)
		}
	}
}

// TestAQueueNamedLikeAnotherQueuesDeadLetterStreamIsRefused: a queue keeps
// its dead letters in the stream <name>_dlq, so the queue names "x" and
// "x_dlq" map to one stream. Whichever comes second is refused, naming
// the stream and the other queue. Queue x once adopted queue x_dlq's
// stream as its dead-letter stream with a warning only, and its dead
// letters then found no stream; queue y_dlq after queue y was told to add
// its subject to y's dead-letter stream.
func TestAQueueNamedLikeAnotherQueuesDeadLetterStreamIsRefused(t *testing.T) {
	_, nc := startNATS(t, nil)
	base := testConfig(t).Name
	cfg := func(name string) workqueue.Config {
		c := testConfig(t)
		c.Name = name
		return c
	}
	newQueue[job](t, nc, cfg(base+"_x_dlq"))
	q, err := workqueue.New[job](context.Background(), nc, cfg(base+"_x"))
	if err == nil {
		_ = q.Close()
	}
	if !errors.Is(err, workqueue.ErrStreamMismatch) || !strings.Contains(err.Error(), "stream "+base+"_x_dlq") ||
		!strings.Contains(err.Error(), "work queue "+base+"_x_dlq") || !strings.Contains(err.Error(), "rename") {
		t.Errorf("a queue whose dead-letter stream is another queue's: %v; want ErrStreamMismatch naming the stream, the queue and what to do", err)
	}
	a, err := workqueue.NewAdmin(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Info(ctxFor(t, 10*time.Second), base+"_x_dlq"); err != nil {
		t.Errorf("queue %s_x_dlq after a queue named %s_x was refused: %v; want it still a queue", base, base, err)
	}

	newQueue[job](t, nc, cfg(base+"_y"))
	q, err = workqueue.New[job](context.Background(), nc, cfg(base+"_y_dlq"))
	if err == nil {
		_ = q.Close()
	}
	if !errors.Is(err, workqueue.ErrStreamMismatch) || !strings.Contains(err.Error(), "dead-letter stream of queue "+base+"_y") ||
		!strings.Contains(err.Error(), "another name") {
		t.Errorf("a queue named like another queue's dead-letter stream: %v; want ErrStreamMismatch naming that queue and what to do", err)
	}
}
