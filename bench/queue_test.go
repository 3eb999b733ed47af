package bench

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/workqueue"
)

// queueJob is the size of every job in BenchmarkQueue.
const queueJob = 256

// BenchmarkQueue measures a durable work queue: b.N jobs of 256 bytes are
// enqueued (each stored on the file store of a JetStream stream with
// WorkQueue retention), then consumed, each acknowledged after its handler
// ran. One op is one job: ns/op and jobs/s time the whole, from the first
// enqueue to the last job handled; enqueue-jobs/s and consume-jobs/s time
// the two phases (the enqueue ends when the server has acknowledged every
// job). Setup (streams, consumers) is not timed. Every peer has its own
// embedded nats-server with JetStream on loopback.
//
//   - jetstream-raw: nats.go's jetstream package, PublishAsync then a
//     Consume callback that acks each message: the floor.
//   - loom: workqueue.Queue[[]byte] with its defaults, EnqueueAsync then
//     Flush, then Consume with concurrency 4 and a prefetch of 500 (as
//     nats.go's Consume buffers). LOOM_BENCH_AUTO_ID=1 gives every job a
//     message id (workqueue.Config.AutoID) to measure what that costs.
//   - watermill: ThreeDotsLabs' watermill-nats v2 JetStream publisher and
//     subscriber (pkg/jetstream, a grouped consumer on the WorkQueue
//     stream, asynchronous acks).
//   - fetch-one: Coze Studio's consumer loop, PullSubscribe then
//     Fetch(1, MaxWait(1s)) and Ack, one message at a time; enqueued as
//     jetstream-raw does.
func BenchmarkQueue(b *testing.B) {
	for _, p := range []struct {
		name string
		run  func(b *testing.B, nc *nats.Conn, url, name string, n int, enqueued func())
	}{
		{"jetstream-raw", queueRaw},
		{"loom", queueLoom},
		{"watermill", queueWatermill},
		{"fetch-one", queueFetchOne},
	} {
		b.Run(p.name, func(b *testing.B) {
			ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true, StoreDir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer ns.Shutdown()
			nc, err := nats.Connect(ns.ClientURL())
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			// The timer runs from the first enqueue to the last job
			// handled (setup is excluded); the two phases are also timed
			// apart.
			b.ResetTimer()
			var enqueue time.Duration
			p.run(b, nc, ns.ClientURL(), "bench_queue", b.N, func() { enqueue = b.Elapsed() })
			b.StopTimer()
			total := b.Elapsed()
			b.ReportMetric(float64(b.N)/total.Seconds(), "jobs/s")
			b.ReportMetric(float64(b.N)/enqueue.Seconds(), "enqueue-jobs/s")
			b.ReportMetric(float64(b.N)/(total-enqueue).Seconds(), "consume-jobs/s")
		})
	}
}

func job256() []byte {
	p := make([]byte, queueJob)
	for i := range p {
		p[i] = 'a' + byte(i%26)
	}
	return p
}

// workQueueStream creates the stream every peer but Loom uses; Loom makes
// its own, the same but for its metadata and dead-letter stream.
func workQueueStream(b *testing.B, js jetstream.JetStream, name, subject string) {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	_, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: name, Subjects: []string{subject}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew,
	})
	if err != nil {
		b.Fatal(err)
	}
}

// publishRaw enqueues n jobs with PublishAsync.
func publishRaw(b *testing.B, js jetstream.JetStream, subject string, n int) {
	b.Helper()
	data := job256()
	for range n {
		if _, err := js.PublishAsync(subject, data); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatalf("%d async publishes unacknowledged after a minute", js.PublishAsyncPending())
	}
}

func queueRaw(b *testing.B, nc *nats.Conn, _ string, name string, n int, enqueued func()) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	defer js.CleanupPublisher()
	workQueueStream(b, js, name, name+".queue")
	publishRaw(b, js, name+".queue", n)
	enqueued()
	b.StopTimer()
	cons, err := js.CreateOrUpdateConsumer(context.Background(), name, jetstream.ConsumerConfig{
		Durable: "worker-group", AckPolicy: jetstream.AckExplicitPolicy,
	})
	b.StartTimer()
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	var got atomic.Int64
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if len(m.Data()) != queueJob {
			b.Errorf("job of %d bytes", len(m.Data()))
		}
		_ = m.Ack()
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()
	waitJobs(b, done, &got, n)
}

func queueLoom(b *testing.B, nc *nats.Conn, _ string, name string, n int, enqueued func()) {
	ctx := context.Background()
	cfg := workqueue.DefaultConfig(name)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.AutoID = os.Getenv("LOOM_BENCH_AUTO_ID") != ""
	b.StopTimer()
	q, err := workqueue.New[[]byte](ctx, nc, cfg)
	b.StartTimer()
	if err != nil {
		b.Fatal(err)
	}
	defer q.Shutdown(ctx)
	data := job256()
	for range n {
		if _, err := q.EnqueueAsync(ctx, data); err != nil {
			b.Fatal(err)
		}
	}
	if err := q.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	enqueued()
	done := make(chan struct{})
	var got atomic.Int64
	c, err := q.Consume(workqueue.HandlerFunc[[]byte](func(ctx context.Context, j *workqueue.Job[[]byte]) error {
		if len(j.Value) != queueJob {
			b.Errorf("job of %d bytes", len(j.Value))
		}
		if got.Add(1) == int64(n) {
			close(done)
		}
		return nil
	}), workqueue.WithConcurrency(4), workqueue.WithPrefetch(500))
	if err != nil {
		b.Fatal(err)
	}
	waitJobs(b, done, &got, n)
	b.StopTimer()
	_ = c.Shutdown(ctx)
	b.StartTimer()
}

func queueWatermill(b *testing.B, nc *nats.Conn, url, name string, n int, enqueued func()) {
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	// watermill publishes to the subject named like the stream.
	subject := "wm_" + name
	workQueueStream(b, js, subject, subject)
	logger := watermill.NopLogger{}
	stream := func(topic string) jetstream.StreamConfig {
		return jetstream.StreamConfig{Name: topic, Subjects: []string{topic}, Retention: jetstream.WorkQueuePolicy}
	}
	// Each side gets a connection of its own: watermill closes them.
	pubConn, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	pub, err := wmjs.NewPublisher(wmjs.PublisherConfig{Conn: pubConn, Logger: logger, ConfigureStream: stream})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	data := job256()
	for range n {
		if err := pub.Publish(subject, message.NewMessage(watermill.NewUUID(), data)); err != nil {
			b.Fatal(err)
		}
	}
	enqueued()
	subConn, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	sub, err := wmjs.NewSubscriber(wmjs.SubscriberConfig{
		Conn: subConn, Logger: logger, AckAsync: true, ConfigureStream: stream,
		ResourceInitializer: wmjs.GroupedConsumer("worker-group"),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := sub.Subscribe(ctx, subject)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i++ {
		select {
		case m := <-msgs:
			if len(m.Payload) != queueJob {
				b.Errorf("job of %d bytes", len(m.Payload))
			}
			m.Ack()
		case <-time.After(time.Minute):
			b.Fatalf("watermill: %d of %d jobs after a minute", i, n)
		}
	}
	b.StopTimer()
	cancel()
	_ = sub.Close()
	b.StartTimer()
}

func queueFetchOne(b *testing.B, nc *nats.Conn, _ string, name string, n int, enqueued func()) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	defer js.CleanupPublisher()
	workQueueStream(b, js, name, name+".queue")
	publishRaw(b, js, name+".queue", n)
	enqueued()
	// Coze Studio's startJetStreamConsumer, with nats.go's legacy API as
	// it uses it (less its second nats.Durable option, which nats.go
	// v1.55 refuses as set twice).
	legacy, err := nc.JetStream()
	if err != nil {
		b.Fatal(err)
	}
	sub, err := legacy.PullSubscribe(name+".queue", "worker-group")
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	for got := 0; got < n; {
		msgs, err := sub.Fetch(1, nats.MaxWait(time.Second))
		if err != nil {
			if err == nats.ErrTimeout {
				continue
			}
			b.Fatal(err)
		}
		for _, m := range msgs {
			if len(m.Data) != queueJob {
				b.Errorf("job of %d bytes", len(m.Data))
			}
			_ = m.Ack()
			got++
		}
	}
}

func waitJobs(b *testing.B, done chan struct{}, got *atomic.Int64, n int) {
	b.Helper()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("%d of %d jobs consumed after two minutes", got.Load(), n)
	}
}
