package workqueue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// TestPoisonJobIsDeadLetteredAfterMaxDeliverWithBackoff is fault test (c):
// a job whose handler always fails is attempted MaxDeliver times, with
// exponential backoff between attempts (the gaps are measured), then
// lands in the dead-letter stream with its last error and its count of
// deliveries, and leaves the queue.
func TestPoisonJobIsDeadLetteredAfterMaxDeliverWithBackoff(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.MaxDeliver = 5
	cfg.BackoffInitial = 100 * time.Millisecond
	cfg.BackoffMax = time.Second
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 20*time.Second)

	var mu sync.Mutex
	var attempts []time.Time
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		if j.Value.ID != 666 {
			return nil
		}
		mu.Lock()
		attempts = append(attempts, time.Now())
		n := len(attempts)
		mu.Unlock()
		return fmt.Errorf("poison attempt %d: cannot handle job 666", n)
	})
	if err := q.Enqueue(ctx, job{ID: 666, Text: "poison"}); err != nil {
		t.Fatal(err)
	}
	admin, err := workqueue.NewAdmin(nc)
	if err != nil {
		t.Fatal(err)
	}
	var dead []workqueue.DeadLetter
	testutil.Eventually(t, 10*time.Second, "the poison job in the dead-letter stream", func() bool {
		dead, err = admin.DeadLetters(ctx, q.Name(), 10)
		return err == nil && len(dead) == 1
	})
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != cfg.MaxDeliver {
		t.Fatalf("%d attempts, want MaxDeliver = %d", len(attempts), cfg.MaxDeliver)
	}
	var gaps []string
	for i := 1; i < len(attempts); i++ {
		gap := attempts[i].Sub(attempts[i-1])
		want := cfg.BackoffInitial << (i - 1)
		gaps = append(gaps, gap.Round(time.Millisecond).String())
		if gap < want*9/10 || gap > 2*want+500*time.Millisecond {
			t.Errorf("gap before attempt %d is %s, want about %s", i+1, gap, want)
		}
	}
	t.Logf("gaps between the %d attempts: %s (backoff 100ms doubling)", len(attempts), strings.Join(gaps, ", "))
	d := dead[0]
	if d.Reason != "failed" || d.Deliveries != cfg.MaxDeliver || !strings.Contains(d.Error, "poison attempt 5") {
		t.Errorf("dead letter: reason %q, deliveries %d, error %q; want failed, %d, the last error", d.Reason, d.Deliveries, d.Error, cfg.MaxDeliver)
	}
	if d.Header.Get(workqueue.HeaderDeliveries) != "5" || d.Header.Get(workqueue.HeaderError) == "" {
		t.Errorf("dead-letter headers %v lack the delivery count or the error", d.Header)
	}
	testutil.Eventually(t, 5*time.Second, "the queue empty", func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.Jobs == 0 && info.DeadLetters == 1
	})
}

func TestHandlerPanicCountsAsAFailure(t *testing.T) {
	_, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	ctx := ctxFor(t, 10*time.Second)
	var calls atomic.Int64
	done := make(chan int, 1)
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		if calls.Add(1) == 1 {
			panic("boom")
		}
		done <- j.Deliveries
		return nil
	})
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-done:
		if n != 2 {
			t.Errorf("succeeded on delivery %d, want 2", n)
		}
	case <-ctx.Done():
		t.Fatal("the job was not retried after its handler panicked")
	}
}

func TestJobThatDoesNotDecodeIsDeadLetteredAtOnce(t *testing.T) {
	_, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	ctx := ctxFor(t, 10*time.Second)
	var calls atomic.Int64
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		calls.Add(1)
		return nil
	})
	// Raw bytes that are not MessagePack for a job.
	if err := nc.Publish(q.Config().Subject, []byte{0xc1, 0xff, 0x00}); err != nil {
		t.Fatal(err)
	}
	admin, _ := workqueue.NewAdmin(nc)
	var dead []workqueue.DeadLetter
	testutil.Eventually(t, 5*time.Second, "the bad job dead-lettered", func() bool {
		dead, _ = admin.DeadLetters(ctx, q.Name(), 10)
		return len(dead) == 1
	})
	if d := dead[0]; d.Reason != "decode" || d.Deliveries != 1 || !strings.Contains(d.Error, "does not decode") {
		t.Errorf("dead letter: reason %q after %d deliveries, error %q; want decode after 1", d.Reason, d.Deliveries, d.Error)
	}
	if calls.Load() != 0 {
		t.Errorf("the handler ran %d times on a job that does not decode", calls.Load())
	}
}

func TestPermanentErrorDeadLettersWithoutRetry(t *testing.T) {
	_, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	ctx := ctxFor(t, 10*time.Second)
	var calls atomic.Int64
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		calls.Add(1)
		return workqueue.Permanent(errors.New("invalid order"))
	})
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "dead-lettered", func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.DeadLetters == 1 && info.Jobs == 0
	})
	// The job has left the stream: it cannot be delivered again.
	if calls.Load() != 1 {
		t.Errorf("handler ran %d times, want 1", calls.Load())
	}
}

func TestLongHandlerIsKeptAliveWithProgressReports(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.AckWait = time.Second
	cfg.HandlerTimeout = 10 * time.Second
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 10*time.Second)
	var calls atomic.Int64
	done := make(chan struct{})
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		calls.Add(1)
		time.Sleep(2500 * time.Millisecond) // the job's work: two and a half AckWaits
		close(done)
		return nil
	}, workqueue.WithConcurrency(2))
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	<-done
	// A redelivery during the work would have started on the idle second
	// worker already; once the ack is in, none can come.
	testutil.Eventually(t, 5*time.Second, "the job acked", func() bool {
		info, err := q.Info(ctx)
		return err == nil && info.Jobs == 0
	})
	if n := calls.Load(); n != 1 {
		t.Errorf("a handler running 2.5 AckWaits was called %d times; progress reports should have kept its job", n)
	}
}

func TestHungHandlerIsBoundedAndItsJobRedelivered(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	// The handler outlives AckWait, so progress reports must hold the job
	// until HandlerTimeout. The watchdog sends one when a job's last is
	// AckWait/2 old, checking every AckWait/4: a report may leave as late
	// as 3/4 AckWait and has the last quarter to reach the server. With
	// 300ms that quarter was 75ms, which a loaded 2-core machine under
	// -race exceeds: the job came back while its handler still ran, was
	// handed back twice, and the next handler saw delivery 4. A quarter
	// of 2s (500ms) leaves room.
	cfg.AckWait = 2 * time.Second
	cfg.HandlerTimeout = 2500 * time.Millisecond
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 10*time.Second)
	var calls atomic.Int64
	done := make(chan int, 1)
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		if calls.Add(1) == 1 {
			<-ctx.Done() // hangs until its timeout
			return ctx.Err()
		}
		done <- j.Deliveries
		return nil
	}, workqueue.WithConcurrency(2))
	start := time.Now()
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-done:
		t.Logf("redelivered after %s, delivery %d", time.Since(start).Round(time.Millisecond), n)
		if n != 2 {
			t.Errorf("delivery %d, want 2", n)
		}
	case <-ctx.Done():
		t.Fatal("the hung handler's job was never redelivered")
	}
}

func TestDequeueNeedsAnExplicitAck(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.AckWait = 300 * time.Millisecond
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 10*time.Second)
	if err := q.Enqueue(ctx, job{ID: 7, Text: "prefill"}); err != nil {
		t.Fatal(err)
	}
	j, err := q.Dequeue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if j.Value.ID != 7 || j.Deliveries != 1 {
		t.Fatalf("got %+v on delivery %d", j.Value, j.Deliveries)
	}
	// Not acked: it comes back after AckWait, as a crashed worker's would.
	j2, err := q.Dequeue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if j2.Value.ID != 7 || j2.Deliveries != 2 {
		t.Fatalf("got %+v on delivery %d, want job 7 again on delivery 2", j2.Value, j2.Deliveries)
	}
	if err := j2.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if err := j2.Ack(ctx); !errors.Is(err, workqueue.ErrSettled) {
		t.Errorf("second Ack: %v, want ErrSettled", err)
	}
	short, cancel := context.WithTimeout(ctx, 600*time.Millisecond)
	defer cancel()
	if j3, err := q.Dequeue(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dequeue on an empty queue: %v, %v; want the deadline", j3, err)
	}
}

func TestShutdownHandsBackPrefetchedJobsAtOnce(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.AckWait = 30 * time.Second // a job not handed back would wait this long
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 20*time.Second)
	const n = 20
	for i := range n {
		if err := q.Enqueue(ctx, job{ID: i}); err != nil {
			t.Fatal(err)
		}
	}
	// Copies of the jobs the server delivers on nc, the connection the
	// consumer pulls on.
	deliveries, err := nc.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = deliveries.Unsubscribe() }()
	started := make(chan struct{}, n)
	release := make(chan struct{})
	slow, err := q.Consume(workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
		started <- struct{}{}
		<-release
		return nil
	}), workqueue.WithConcurrency(1), workqueue.WithPrefetch(10))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	// Wait until the client holds the prefetch; the queue's in-flight
	// count does not show it: the server counts a job delivered before the
	// job has left it. Shutdown hands back what the server sent before it
	// saw the pull's inbox unsubscribed, but a job still in the server's
	// send queue then goes to nobody and comes back only after AckWait.
	for got := 0; got < 10; {
		m, err := deliveries.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("the client got %d of the 10 jobs prefetched: %v", got, err)
		}
		if strings.HasPrefix(m.Reply, "$JS.ACK.") {
			got++
		}
	}
	// Shutdown has stopped pulling once it hands back a prefetched job;
	// from then on the running handler's worker gets no other.
	stopped := shutdownHandingBack(ctx, t, nc, q.Name(), slow, 1)
	close(release)
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	var handled atomic.Int64
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		handled.Add(1)
		return nil
	}, workqueue.WithConcurrency(4))
	testutil.Eventually(t, 15*time.Second, "the other consumer got every job left, without waiting for AckWait", func() bool {
		return handled.Load() == n-1
	})
}

// TestShutdownHandsBackJobsThatArriveAfterAStall: the server counts a job
// delivered before it leaves, and the connection may stall while Shutdown
// hands back the prefetch. Jobs the server delivered to the consumer before
// Shutdown, and that reach it only after a stall of more than a second,
// are still handed back at once, not left to come back after ack_wait.
func TestShutdownHandsBackJobsThatArriveAfterAStall(t *testing.T) {
	ns, direct := startNATS(t, nil)
	fz := testutil.NewFreezer(t, strings.TrimPrefix(ns.ClientURL(), "nats://"))
	nc := connect(t, "nats://"+fz.Addr())
	cfg := testConfig(t)
	cfg.AckWait = time.Minute // a job not handed back would wait this long
	q := newQueue[job](t, nc, cfg)
	producer := newQueue[job](t, direct, cfg)
	ctx := ctxFor(t, 30*time.Second)
	const n = 4
	var ran atomic.Int64
	c, err := q.Consume(workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
		ran.Add(1)
		return nil
	}), workqueue.WithConcurrency(1), workqueue.WithPrefetch(n))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the consumer's pull request reached the server", func() bool {
		info, err := producer.Info(ctx)
		return err == nil && info.Waiting == 1
	})
	// From here the consumer's connection is stalled: the server delivers
	// the jobs to its pull request, and they wait in the stalled
	// connection.
	fz.Freeze()
	for i := range n {
		if err := producer.Enqueue(ctx, job{ID: i}); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, "the server delivered the jobs to the stalled consumer", func() bool {
		info, err := producer.Info(ctx)
		return err == nil && info.InFlight == n
	})
	stopped := make(chan error, 1)
	go func() { stopped <- c.Shutdown(ctx) }()
	// The stall lasts 1.5 s, or until Shutdown returns without the jobs.
	stall := time.NewTimer(1500 * time.Millisecond)
	defer stall.Stop()
	select {
	case err := <-stopped:
		stopped <- err
	case <-stall.C:
	}
	fz.Thaw()
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := ran.Load(); got != 0 {
		t.Fatalf("%d jobs ran in the consumer shut down, want none", got)
	}
	var handled atomic.Int64
	consume(t, producer, func(ctx context.Context, j *workqueue.Job[job]) error {
		handled.Add(1)
		return nil
	}, workqueue.WithConcurrency(n))
	testutil.Eventually(t, 15*time.Second, "another consumer got every job, without waiting for ack_wait", func() bool {
		return handled.Load() == n
	})
}

// TestCloseDoesNotWaitOutAStalledConnection: handing back the jobs on
// their way waits for the server's answer, but Close waits for it at most
// ShutdownGrace, not the ten seconds of nats.go's flush.
func TestCloseDoesNotWaitOutAStalledConnection(t *testing.T) {
	ns, direct := startNATS(t, nil)
	fz := testutil.NewFreezer(t, strings.TrimPrefix(ns.ClientURL(), "nats://"))
	defer fz.Thaw()
	nc := connect(t, "nats://"+fz.Addr())
	cfg := testConfig(t)
	cfg.AckWait = time.Minute
	q := newQueue[job](t, nc, cfg)
	producer := newQueue[job](t, direct, cfg)
	ctx := ctxFor(t, 30*time.Second)
	c, err := q.Consume(workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
		return nil
	}), workqueue.WithConcurrency(1), workqueue.WithPrefetch(2))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the consumer's pull request reached the server", func() bool {
		info, err := producer.Info(ctx)
		return err == nil && info.Waiting == 1
	})
	fz.Freeze()
	if err := producer.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the server delivered the job to the stalled consumer", func() bool {
		info, err := producer.Info(ctx)
		return err == nil && info.InFlight == 1
	})
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if took, limit := time.Since(start), workqueue.ShutdownGrace+2*time.Second; took > limit {
		t.Fatalf("Close took %s on a stalled connection, want at most %s", took.Round(time.Millisecond), limit)
	}
}

// TestAHandedBackJobCountsAsADelivery: JetStream counts every delivery,
// handled or not, so a job that a consumer shutting down hands back
// unstarted comes nearer max_deliver, and one handed back max_deliver
// times is dead-lettered as expired without having run, as
// docs/queues.md says.
func TestAHandedBackJobCountsAsADelivery(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.AckWait = time.Second // a job on its way at Close comes back after it
	cfg.MaxDeliver = 1
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 30*time.Second)
	for i := range 2 {
		if err := q.Enqueue(ctx, job{ID: i}); err != nil {
			t.Fatal(err)
		}
	}
	// Copies of the jobs the server delivers on nc, the connection the
	// consumer pulls on.
	deliveries, err := nc.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = deliveries.Unsubscribe() }()
	var mu sync.Mutex
	ran := map[int]int{}
	started := make(chan struct{}, 2)
	c, err := q.Consume(workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
		mu.Lock()
		ran[j.Value.ID]++
		mu.Unlock()
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}), workqueue.WithConcurrency(1), workqueue.WithPrefetch(2))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	for got := 0; got < 2; { // the running job and the one prefetched
		m, err := deliveries.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("%d of 2 deliveries: %v", got, err)
		}
		if strings.HasPrefix(m.Reply, "$JS.ACK."+q.Name()+".") {
			got++
		}
	}
	// Close cancels the running handler and hands back both jobs; the
	// prefetched one was never started.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		handled.Add(1)
		return nil
	})
	var dead []workqueue.DeadJob[job]
	testutil.Eventually(t, 10*time.Second, "both jobs dead-lettered", func() bool {
		var err error
		dead, err = q.DeadLetters(ctx, 10)
		return err == nil && len(dead) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != 1 || handled.Load() != 0 {
		t.Fatalf("handlers ran on jobs %v, and on %d after; want 1 job run, none after", ran, handled.Load())
	}
	i := slices.IndexFunc(dead, func(d workqueue.DeadJob[job]) bool { return ran[d.Value.ID] == 0 })
	if i < 0 || dead[i].Reason != "expired" || dead[i].Deliveries != 2 {
		t.Fatalf("dead letters %+v; want the job that never ran dead-lettered as expired after 2 deliveries", dead)
	}
	if !strings.Contains(dead[i].Error, "shutting down handed it back") {
		t.Errorf("the dead letter's error %q does not say that a job handed back unstarted counts as a delivery", dead[i].Error)
	}
}

// shutdownHandingBack starts c's Shutdown and returns once it has handed
// back n prefetched jobs of queue (its naks, seen on the wire); the
// channel gets Shutdown's result.
func shutdownHandingBack(ctx context.Context, t *testing.T, nc *nats.Conn, queue string, c *workqueue.Consumer, n int) <-chan error {
	t.Helper()
	acks, err := nc.SubscribeSync("$JS.ACK." + queue + ".>")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = acks.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- c.Shutdown(ctx) }()
	for naks := 0; naks < n; {
		m, err := acks.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("Shutdown handed back %d of %d prefetched jobs: %v", naks, n, err)
		}
		if string(m.Data) == "-NAK" {
			naks++
		}
	}
	return stopped
}

func TestNewIsIdempotentAndUpdatesSettings(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	q1 := newQueue[job](t, nc, cfg)
	cfg.AckWait = 7 * time.Second
	cfg.MaxDeliver = 9
	q2 := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 5*time.Second)
	if err := q1.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	info, err := q2.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Jobs != 1 || info.MaxDeliver != 9 {
		t.Errorf("info %+v: want the job enqueued by the first handle, and MaxDeliver 9", info)
	}
	// A stream made by someone else whose subjects do not take the
	// queue's is an error that says what to do.
	js, _ := nc.JetStream()
	if _, err := js.AddStream(&nats.StreamConfig{Name: "foreign", Subjects: []string{"elsewhere.*"}}); err != nil {
		t.Fatal(err)
	}
	bad := testConfig(t)
	bad.Name = "foreign"
	bad.Subject = "foreign.queue"
	_, err = workqueue.New[job](ctx, nc, bad)
	if !errors.Is(err, workqueue.ErrStreamMismatch) || !strings.Contains(err.Error(), "elsewhere.*") {
		t.Fatalf("New on a stream without the queue's subject: %v; want ErrStreamMismatch naming its subjects", err)
	}
	t.Logf("New on a foreign stream: %v", err)
}

func TestConsumerDeletedUnderAWorkerIsCreatedAgain(t *testing.T) {
	_, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	ctx := ctxFor(t, 20*time.Second)
	var mu sync.Mutex
	handled := map[int]int{}
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		mu.Lock()
		handled[j.Value.ID]++
		mu.Unlock()
		return nil
	})
	seen := func(id int) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return handled[id] > 0 }
	}
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the first job handled", seen(1))
	js, _ := nc.JetStream()
	if err := js.DeleteConsumer(q.Name(), q.Config().Group); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(ctx, job{ID: 2}); err != nil {
		t.Fatal(err)
	}
	// Job 1's ack may have been lost with the consumer, so it may come
	// again (at least once); what matters is that job 2 is handled.
	testutil.Eventually(t, 15*time.Second, "the job enqueued after the consumer was deleted handled", seen(2))
}

func TestCloseCancelsRunningHandlersAndHandsTheirJobsBack(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.AckWait = 30 * time.Second // a job not handed back would wait this long
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 20*time.Second)
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	cancelled := make(chan error, 1)
	c, err := q.Consume(workqueue.HandlerFunc[job](func(ctx context.Context, j *workqueue.Job[job]) error {
		started <- struct{}{}
		<-ctx.Done()
		cancelled <- ctx.Err()
		return ctx.Err()
	}), workqueue.WithConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("handler's context ended with %v, want Canceled", err)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after Close returned")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown after Close: %v", err)
	}
	handled := make(chan int, 1)
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		handled <- j.Value.ID
		return nil
	})
	select {
	case id := <-handled:
		if id != 1 {
			t.Fatalf("handled job %d, want 1", id)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the job of the closed consumer was not handed back before AckWait")
	}
}

func TestQueueCloseReleasesEnqueueingAtOnce(t *testing.T) {
	_, nc := startNATS(t, nil)
	q, err := workqueue.New[job](context.Background(), nc, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 20*time.Second)
	p, err := q.EnqueueAsync(ctx, job{ID: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := q.Enqueue(ctx, job{ID: 2}); !errors.Is(err, workqueue.ErrClosed) {
		t.Fatalf("Enqueue after Close: %v, want ErrClosed", err)
	}
	if _, err := q.EnqueueAsync(ctx, job{ID: 3}); !errors.Is(err, workqueue.ErrClosed) {
		t.Fatalf("EnqueueAsync after Close: %v, want ErrClosed", err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := q.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown after Close: %v", err)
	}
	info, err := q.Info(ctx)
	if err != nil || info.Jobs != 1 {
		t.Fatalf("queue holds %+v (%v), want the one job enqueued before Close", info, err)
	}
}

func TestQueueReadsRequeuesAndPurgesItsDeadLettersTyped(t *testing.T) {
	_, nc := startNATS(t, nil)
	q := newQueue[job](t, nc, testConfig(t))
	ctx := ctxFor(t, 20*time.Second)
	var poisoned atomic.Bool
	poisoned.Store(true)
	handled := make(chan job, 1)
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		if poisoned.Load() {
			return workqueue.Permanent(errors.New("cannot handle it"))
		}
		handled <- j.Value
		return nil
	})
	if err := q.Enqueue(ctx, job{ID: 666, Text: "poison"}); err != nil {
		t.Fatal(err)
	}
	var dead []workqueue.DeadJob[job]
	testutil.Eventually(t, 10*time.Second, "the poison job dead-lettered", func() bool {
		var err error
		dead, err = q.DeadLetters(ctx, 10)
		return err == nil && len(dead) == 1
	})
	// Bytes that are not MessagePack for a job: dead-lettered, undecodable.
	if err := nc.Publish(q.Config().Subject, []byte{0xc1, 0xff, 0x00}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the undecodable job dead-lettered", func() bool {
		var err error
		dead, err = q.DeadLetters(ctx, 10)
		return err == nil && len(dead) == 2
	})
	if d := dead[0]; d.Value != (job{ID: 666, Text: "poison"}) || d.DecodeError != nil || d.Reason != "permanent" || !strings.Contains(d.Error, "cannot handle it") {
		t.Fatalf("first dead job: %+v, decode error %v, reason %q, error %q", d.Value, d.DecodeError, d.Reason, d.Error)
	}
	if d := dead[1]; d.Value != (job{}) || d.DecodeError == nil || d.Reason != "decode" {
		t.Fatalf("second dead job: %+v, decode error %v, reason %q; want the zero job, a decode error, reason decode", d.Value, d.DecodeError, d.Reason)
	}
	poisoned.Store(false)
	if n, err := q.Requeue(ctx, dead[0].Seq); err != nil || n != 1 {
		t.Fatalf("Requeue: %d, %v", n, err)
	}
	select {
	case j := <-handled:
		if j.ID != 666 {
			t.Fatalf("handled %+v, want the requeued job", j)
		}
	case <-ctx.Done():
		t.Fatal("the requeued job never came back")
	}
	if n, err := q.PurgeDeadLetters(ctx); err != nil || n != 1 {
		t.Fatalf("PurgeDeadLetters: %d, %v; want the undecodable one", n, err)
	}
	if dead, err := q.DeadLetters(ctx, 10); err != nil || len(dead) != 0 {
		t.Fatalf("after the purge: %d dead jobs, %v", len(dead), err)
	}
}

// TestAHandlerPastHandlerTimeoutHasItsContextEndWithItsDeadline: the
// handler's context carries handler_timeout as its deadline, so that the
// calls it makes inherit the budget, and ends with DeadlineExceeded, not
// the Canceled a shutdown gives.
func TestAHandlerPastHandlerTimeoutHasItsContextEndWithItsDeadline(t *testing.T) {
	_, nc := startNATS(t, nil)
	cfg := testConfig(t)
	cfg.AckWait = 2 * time.Second
	cfg.HandlerTimeout = 300 * time.Millisecond
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 10*time.Second)
	type attempt struct {
		deadline bool
		took     time.Duration
		err      error
	}
	first := make(chan attempt, 1)
	var calls atomic.Int64
	consume(t, q, func(ctx context.Context, j *workqueue.Job[job]) error {
		if calls.Add(1) > 1 {
			return nil
		}
		start := time.Now()
		_, ok := ctx.Deadline()
		<-ctx.Done()
		first <- attempt{deadline: ok, took: time.Since(start), err: ctx.Err()}
		return ctx.Err()
	})
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-first:
		if !a.deadline || !errors.Is(a.err, context.DeadlineExceeded) || a.took < 250*time.Millisecond || a.took > 5*time.Second {
			t.Errorf("handler context: deadline %v, ended with %v after %s; want a deadline, and DeadlineExceeded after about 300ms", a.deadline, a.err, a.took)
		}
	case <-ctx.Done():
		t.Fatal("the handler was never called")
	}
}
