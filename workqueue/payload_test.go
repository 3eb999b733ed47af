package workqueue_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/objectstore"
	"github.com/loomrt/loom/workqueue"
)

// maxPayload is the server's max_payload in these tests.
const maxPayload = 64 << 10

func smallPayloadServer(o *server.Options) { o.MaxPayload = maxPayload }

func TestJobAboveMaxPayloadTravelsByReference(t *testing.T) {
	_, nc := startNATS(t, smallPayloadServer)
	cfg := testConfig(t)
	cfg.ObjectBucket = "payloads_" + cfg.Name
	q := newQueue[[]byte](t, nc, cfg)
	ctx := ctxFor(t, 20*time.Second)
	big := bytes.Repeat([]byte("0123456789abcdef"), 40_000) // 640 KB, ten times max_payload
	small := []byte("small job")
	if err := q.Enqueue(ctx, big); err != nil {
		t.Fatalf("Enqueue of a %d-byte job with max_payload %d: %v", len(big), maxPayload, err)
	}
	if err := q.EnqueueBatch(ctx, [][]byte{small, big}); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 3)
	consume(t, q, func(ctx context.Context, j *workqueue.Job[[]byte]) error {
		got <- j.Value
		return nil
	})
	var bigs int
	for range 3 {
		select {
		case v := <-got:
			switch {
			case bytes.Equal(v, big):
				bigs++
			case bytes.Equal(v, small):
			default:
				t.Fatalf("got a %d-byte job that is neither", len(v))
			}
		case <-ctx.Done():
			t.Fatal("jobs not delivered")
		}
	}
	if bigs != 2 {
		t.Fatalf("%d large jobs came back, want 2", bigs)
	}
	// Acked jobs take their objects with them.
	js, _ := jetstream.New(nc)
	obs, err := js.ObjectStore(ctx, cfg.ObjectBucket)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "offloaded payloads deleted after their acks", func() bool {
		_, err := obs.List(ctx)
		return errors.Is(err, jetstream.ErrNoObjectsFound)
	})
}

func TestJobAboveMaxPayloadIsRefusedWithSizeAndLimit(t *testing.T) {
	_, nc := startNATS(t, smallPayloadServer)
	cfg := testConfig(t)
	cfg.LargePayloads = "reject"
	q := newQueue[[]byte](t, nc, cfg)
	ctx := ctxFor(t, 10*time.Second)
	start := time.Now()
	err := q.Enqueue(ctx, make([]byte, 100_000))
	var tooLarge *objectstore.TooLargeError
	if !errors.As(err, &tooLarge) {
		t.Fatalf("Enqueue of 100000 bytes: %v; want a *objectstore.TooLargeError", err)
	}
	if time.Since(start) > time.Second {
		t.Errorf("refusal took %s; it must not wait for a timeout", time.Since(start))
	}
	for _, want := range []string{"100000", "65536", "max_payload", "queue.large_payloads=offload"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	_, err = q.EnqueueAsync(ctx, make([]byte, 100_000))
	if !errors.As(err, &tooLarge) {
		t.Errorf("EnqueueAsync: %v; want a *objectstore.TooLargeError", err)
	}
}

func TestLostOffloadedPayloadIsDeadLettered(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	q := newQueue[[]byte](t, nc, cfg)
	ctx := ctxFor(t, 10*time.Second)
	// A message that claims an object that does not exist.
	ref := objectstore.Ref{Bucket: "nowhere", Name: "gone", Size: 10}
	msg := &natsMsg{subject: q.Config().Subject, header: map[string]string{objectstore.RefHeader: ref.String()}}
	if err := msg.publish(nc); err != nil {
		t.Fatal(err)
	}
	consume(t, q, func(ctx context.Context, j *workqueue.Job[[]byte]) error { return nil })
	admin, _ := workqueue.NewAdmin(nc)
	testutil.Eventually(t, 5*time.Second, "dead-lettered with reason payload", func() bool {
		dead, _ := admin.DeadLetters(ctx, q.Name(), 1)
		return len(dead) == 1 && dead[0].Reason == "payload"
	})
}

// TestDeadLetterOfAJobNearMaxPayloadKeepsItsReasonAndError dead-letters
// the largest job the queue accepts, with a long handler error: the copy
// (job plus dead-letter headers) would pass max_payload, so the error in
// its header is shortened, and the reason, the start of the error and the
// job itself are kept.
func TestDeadLetterOfAJobNearMaxPayloadKeepsItsReasonAndError(t *testing.T) {
	_, nc := startNATS(t, smallPayloadServer)
	cfg := testConfig(t)
	cfg.LargePayloads = "reject" // no object store: the copy must fit as it is
	cfg.MaxDeliver = 2
	q := newQueue[[]byte](t, nc, cfg)
	ctx := ctxFor(t, 20*time.Second)

	// The largest job the queue takes; one byte more is refused with a
	// message that says what the limit really is.
	size := maxPayload
	var refusal error
	for ; size > 0; size-- {
		err := q.Enqueue(ctx, bytes.Repeat([]byte{'j'}, size))
		if err == nil {
			break
		}
		var tooLarge *objectstore.TooLargeError
		if !errors.As(err, &tooLarge) {
			t.Fatalf("Enqueue of %d bytes: %v", size, err)
		}
		refusal = err
	}
	t.Logf("largest job taken: %d bytes; one more: %v", size, refusal)
	for _, want := range []string{"65536", "less 512 kept for headers"} {
		if refusal == nil || !strings.Contains(refusal.Error(), want) {
			t.Errorf("refusal %q lacks %q", refusal, want)
		}
	}
	if size < maxPayload-1024 {
		t.Fatalf("the largest job taken is %d bytes, far below max_payload %d", size, maxPayload)
	}

	long := "disk full on /var/spool: " + strings.Repeat("detail ", 3000)
	consume(t, q, func(ctx context.Context, j *workqueue.Job[[]byte]) error {
		return errors.New(long)
	})
	admin, _ := workqueue.NewAdmin(nc)
	var dead []workqueue.DeadLetter
	testutil.Eventually(t, 15*time.Second, "the job dead-lettered", func() bool {
		dead, _ = admin.DeadLetters(ctx, q.Name(), 10)
		return len(dead) == 1
	})
	d := dead[0]
	t.Logf("dead letter: reason %s, %d deliveries, error header %d bytes, body %d bytes", d.Reason, d.Deliveries, len(d.Error), len(d.Data))
	if d.Reason != "failed" || d.Deliveries != cfg.MaxDeliver || !strings.HasPrefix(d.Error, "disk full on /var/spool: detail") {
		t.Errorf("dead letter: reason %q after %d deliveries, error %.60q...; want failed after %d with the handler's error",
			d.Reason, d.Deliveries, d.Error, cfg.MaxDeliver)
	}
	if !bytes.Equal(d.Data, bytes.Repeat([]byte{'j'}, size)) { // []byte jobs travel as they are
		t.Errorf("the dead letter's body is %d bytes, not the %d-byte job", len(d.Data), size)
	}
}

// TestDeadLetterOfARawJobAtMaxPayloadOffloadsItsBody dead-letters a job
// another client sent straight to the queue's subject, just under
// max_payload: even a short error leaves no room for the dead-letter
// headers, so the copy's body goes to the object store, and the job comes
// back whole when requeued.
func TestDeadLetterOfARawJobAtMaxPayloadOffloadsItsBody(t *testing.T) {
	_, nc := startNATS(t, smallPayloadServer)
	cfg := testConfig(t)
	cfg.ObjectBucket = "payloads_" + cfg.Name
	cfg.MaxDeliver = 1
	q := newQueue[[]byte](t, nc, cfg)
	ctx := ctxFor(t, 20*time.Second)
	body := bytes.Repeat([]byte{'r'}, maxPayload-64)
	if err := nc.Publish(q.Config().Subject, body); err != nil {
		t.Fatal(err)
	}
	var fail atomic.Bool
	fail.Store(true)
	got := make(chan []byte, 1)
	consume(t, q, func(ctx context.Context, j *workqueue.Job[[]byte]) error {
		if fail.Load() {
			return errors.New("printer on fire: " + strings.Repeat("smoke ", 500))
		}
		got <- j.Value
		return nil
	})
	admin, _ := workqueue.NewAdmin(nc)
	var dead []workqueue.DeadLetter
	testutil.Eventually(t, 15*time.Second, "the job dead-lettered", func() bool {
		dead, _ = admin.DeadLetters(ctx, q.Name(), 10)
		return len(dead) == 1
	})
	d := dead[0]
	t.Logf("dead letter: reason %s, error header %d bytes, body %d bytes, reference %q", d.Reason, len(d.Error), len(d.Data), d.Header.Get(objectstore.RefHeader))
	if d.Reason != "failed" || !strings.HasPrefix(d.Error, "printer on fire: smoke") {
		t.Errorf("dead letter: reason %q, error %.40q...; want failed with the handler's error", d.Reason, d.Error)
	}
	if d.Header.Get(objectstore.RefHeader) == "" || len(d.Data) != 0 {
		t.Fatalf("the dead letter carries %d bytes and no reference; want its body offloaded", len(d.Data))
	}
	// The queue's own view decodes it, fetching the body by reference.
	typed, err := q.DeadLetters(ctx, 10)
	if err != nil || len(typed) != 1 || typed[0].DecodeError != nil || !bytes.Equal(typed[0].Value, body) {
		t.Fatalf("Queue.DeadLetters: %d dead jobs (%v); want the %d-byte original", len(typed), err, len(body))
	}
	fail.Store(false)
	if n, err := admin.Requeue(ctx, q.Name()); err != nil || n != 1 {
		t.Fatalf("Requeue: %d, %v", n, err)
	}
	select {
	case v := <-got:
		if !bytes.Equal(v, body) {
			t.Fatalf("the requeued job is %d bytes, not the %d-byte original", len(v), len(body))
		}
	case <-ctx.Done():
		t.Fatal("the requeued job never came back")
	}
}

// TestBatchErrorNamesTheJobsNotStored: in a batch whose second job is
// refused, the others are stored and the *BatchError names job 1 alone,
// with its reason.
func TestBatchErrorNamesTheJobsNotStored(t *testing.T) {
	_, nc := startNATS(t, smallPayloadServer)
	cfg := testConfig(t)
	cfg.LargePayloads = "reject"
	q := newQueue[[]byte](t, nc, cfg)
	ctx := ctxFor(t, 10*time.Second)
	err := q.EnqueueBatch(ctx, [][]byte{[]byte("a"), make([]byte, 100_000), []byte("c")})
	var be *workqueue.BatchError
	if !errors.As(err, &be) {
		t.Fatalf("EnqueueBatch: %v; want a *workqueue.BatchError", err)
	}
	var tooLarge *objectstore.TooLargeError
	if be.Total != 3 || len(be.Failed) != 1 || !errors.As(be.Failed[1], &tooLarge) || !errors.As(err, &tooLarge) {
		t.Errorf("BatchError %+v; want job 1 of 3 failed, too large", be)
	}
	if !strings.Contains(err.Error(), "1 of 3 jobs") || !strings.Contains(err.Error(), "job 1: ") {
		t.Errorf("error %q does not name job 1 of 3", err)
	}
	info, err := q.Info(ctx)
	if err != nil || info.Jobs != 2 {
		t.Errorf("queue after the batch: %+v, %v; want jobs 0 and 2 stored", info, err)
	}
}

// TestJobWithHeadersAboveMaxPayloadIsRefusedNamingThem: headers are never
// offloaded, so a job whose headers alone pass max_payload is refused at
// once, by every enqueue (loom queue add's too), naming their size and the limit (not the
// server's bare "maximum payload exceeded", and without first offloading
// its body for nothing).
func TestJobWithHeadersAboveMaxPayloadIsRefusedNamingThem(t *testing.T) {
	_, nc := startNATS(t, smallPayloadServer)
	cfg := testConfig(t)
	cfg.ObjectBucket = "payloads_" + cfg.Name
	q := newQueue[[]byte](t, nc, cfg)
	ctx := ctxFor(t, 10*time.Second)
	h := nats.Header{}
	h.Set("X-Context", strings.Repeat("h", 70_000))
	body := make([]byte, 100_000) // would be offloaded
	check := func(call string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s accepted 70000 bytes of headers", call)
		}
		for _, want := range []string{"headers", "70", "65024", "smaller"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q lacks %q", call, err, want)
			}
		}
	}
	err := q.Enqueue(ctx, body, workqueue.WithHeader(h))
	check("Enqueue", err)
	_, err = q.EnqueueAsync(ctx, body, workqueue.WithHeader(h))
	check("EnqueueAsync", err)
	err = q.Enqueue(ctx, []byte("small"), workqueue.WithKey(strings.Repeat("k", 70_000)))
	check("Enqueue WithKey", err)
	admin, err := workqueue.NewAdmin(nc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.Add(ctx, q.Name(), json.RawMessage(`"small"`), strings.Repeat("k", 70_000))
	check("Admin.Add (loom queue add --key)", err)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.ObjectStore(ctx, cfg.ObjectBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Errorf("object bucket %s: %v; want none made for refused jobs", cfg.ObjectBucket, err)
	}
}
