package workqueue_test

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// startNATSWithUser starts a JetStream server whose one user, "worker",
// has the permissions perms, and connects to it as that user.
func startNATSWithUser(t *testing.T, perms *server.Permissions) *nats.Conn {
	t.Helper()
	return startNATSWithUserAcking(t, perms, ackV1)
}

// ackForm is one of the two forms of ack subject a server sends:
// $JS.ACK.<stream>.<consumer>... by default, and
// $JS.ACK.<domain>.<account hash>.<stream>.<consumer>... with its
// js_ack_fc_v2 feature flag.
type ackForm struct {
	name string
	v2   bool
}

var (
	ackV1    = ackForm{"v1", false}
	ackV2    = ackForm{"v2", true}
	ackForms = []ackForm{ackV1, ackV2}
)

// of is the pattern of queue's ack subjects, as a permission names them.
func (f ackForm) of(queue string) string {
	if f.v2 {
		return "$JS.ACK.*.*." + queue + ".>"
	}
	return "$JS.ACK." + queue + ".>"
}

// named reports whether text names the ack subjects of queue's
// worker-group consumer, in this form, as the narrowest permission needed.
func (f ackForm) named(text, queue string) bool {
	domainAndHash := ""
	if f.v2 {
		domainAndHash = `[^.\s]+\.[^.\s]+\.`
	}
	return regexp.MustCompile(`\(at least \$JS\.ACK\.` + domainAndHash + regexp.QuoteMeta(queue) + `\.worker-group\.>\)`).MatchString(text)
}

// startNATSWithUserAcking is startNATSWithUser with a server that sends
// ack subjects of the form f.
func startNATSWithUserAcking(t *testing.T, perms *server.Permissions, f ackForm) *nats.Conn {
	t.Helper()
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, Configure: func(o *server.Options) {
		o.Users = []*server.User{{Username: "worker", Password: "pw", Permissions: perms}}
		if f.v2 {
			o.FeatureFlags = map[string]bool{"js_ack_fc_v2": true}
		}
	}})
	// The server's refusals reach the connection's error handler too.
	return connect(t, ns.ClientURL(), nats.UserInfo("worker", "pw"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
}

// TestAnEnqueueTheServerRefusesIsAnError: a NATS user without publish
// permission on a queue's subject gets an error from Enqueue, EnqueueAsync
// and EnqueueBatch naming the subject and the permission. The server drops
// such a message and says so only in an asynchronous error: the enqueue
// once waited for an acknowledgement that never comes, retried until its
// deadline and failed with "context deadline exceeded" or "timeout
// waiting for ack", naming no cause. A queue the user may publish to
// works on the same connection, the refusal notwithstanding.
func TestAnEnqueueTheServerRefusesIsAnError(t *testing.T) {
	nc := startNATSWithUser(t, &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.>", "_INBOX.>", "$JS.ACK.>", "loom.dlq.>", "allowed.queue"}},
		Subscribe: &server.SubjectPermission{Allow: []string{">"}},
	})
	newCfg := func(name string) workqueue.Config {
		cfg := testConfig(t)
		cfg.Name = name
		cfg.EnqueueTimeout = 4 * time.Second // an asynchronous send waits 2s for its ack
		return cfg
	}
	allowed := newQueue[job](t, nc, newCfg("allowed"))
	denied := newQueue[job](t, nc, newCfg("denied"))
	check := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "denied.queue") || !strings.Contains(err.Error(), "publish permission") {
			t.Errorf("%s without publish permission: %v; want an error naming the subject and the permission", what, err)
		}
		if err != nil && !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("%s: %v does not wrap nats.ErrPermissionViolation", what, err)
		}
	}
	ctx := ctxFor(t, 60*time.Second)
	check("Enqueue", denied.Enqueue(ctx, job{ID: 1}))
	p, err := denied.EnqueueAsync(ctx, job{ID: 2})
	if err != nil {
		t.Fatalf("EnqueueAsync: %v", err)
	}
	check("EnqueueAsync's Pending", p.Wait(ctx))
	check("Flush", denied.Flush(ctx))
	check("EnqueueBatch", denied.EnqueueBatch(ctx, []job{{ID: 3}}))
	if err := allowed.Enqueue(ctx, job{ID: 4}); err != nil {
		t.Fatalf("Enqueue to a permitted subject after a refusal: %v", err)
	}
	p, err = allowed.EnqueueAsync(ctx, job{ID: 5})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("EnqueueAsync to a permitted subject after a refusal: %v", err)
	}
}

// TestAConsumerTheServerRefusesIsAnError: a NATS user without permission
// to create a queue's consumer gets an error from Consume and Dequeue
// naming the permission. The server drops the request and says so only in
// an asynchronous error: both once failed with "context deadline
// exceeded" and no cause.
func TestAConsumerTheServerRefusesIsAnError(t *testing.T) {
	nc := startNATSWithUser(t, &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.API.CONSUMER.>"}},
		Subscribe: &server.SubjectPermission{Allow: []string{">"}},
	})
	cfg := testConfig(t)
	cfg.EnqueueTimeout = 2 * time.Second // Consume's bound on creating the consumer
	q := newQueue[job](t, nc, cfg)
	check := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "$JS.API.CONSUMER") || !strings.Contains(err.Error(), "publish permission") || !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("%s without permission to create the consumer: %v; want an error naming the permission", what, err)
		}
	}
	c, err := q.Consume(workqueue.HandlerFunc[job](func(context.Context, *workqueue.Job[job]) error { return nil }))
	if err == nil {
		shutdown(t, c)
	}
	check("Consume", err)
	_, err = q.Dequeue(ctxFor(t, 2*time.Second))
	check("Dequeue", err)
}

// TestASubscriptionTheServerRefusesIsAnError: a NATS user who may not
// subscribe to the inbox a consumer's jobs are delivered on (here it may
// subscribe to the two-token inboxes of requests only) gets an error from
// Consume and Dequeue naming the permission. The server refuses the
// subscription only in an asynchronous error: Consume once returned a
// consumer that handled nothing, silently, and Dequeue waited until its
// context ended.
func TestASubscriptionTheServerRefusesIsAnError(t *testing.T) {
	nc := startNATSWithUser(t, &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{">"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.*.*"}},
	})
	q := newQueue[job](t, nc, testConfig(t))
	if err := q.Enqueue(ctxFor(t, 10*time.Second), job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "subscribe permission") || !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("%s without permission to subscribe to its inbox: %v; want an error naming the permission", what, err)
		}
	}
	c, err := q.Consume(workqueue.HandlerFunc[job](func(context.Context, *workqueue.Job[job]) error { return nil }))
	if err == nil {
		shutdown(t, c)
	}
	check("Consume", err)
	_, err = q.Dequeue(ctxFor(t, 10*time.Second))
	check("Dequeue", err)
}

// TestASettlingTheServerRefusesIsAnError: a NATS user who may not publish
// to a queue's ack subjects ($JS.ACK.<stream>.<consumer>.>) gets an error
// naming the permission from a job's Ack, Fail, InProgress and Terminate.
// The server drops such a message and says so only in an asynchronous
// error: Ack once failed with "context deadline exceeded" and no cause,
// and the others returned nil while the job stayed unsettled, to come back
// after ack_wait. The same calls on a queue whose acks are allowed, on the
// same connection and after those refusals, succeed: a refusal of another
// job's ack is never taken for theirs.
func TestASettlingTheServerRefusesIsAnError(t *testing.T) {
	for _, f := range ackForms {
		t.Run(f.name, func(t *testing.T) { settlingRefused(t, f) })
	}
}

func settlingRefused(t *testing.T, f ackForm) {
	cfg := func(name string) workqueue.Config {
		c := testConfig(t)
		c.Name = name
		c.AckWait = 30 * time.Second // no redelivery while the test runs
		return c
	}
	nc := startNATSWithUserAcking(t, &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: []string{f.of("denied")}},
		Subscribe: &server.SubjectPermission{Allow: []string{">"}},
	}, f)
	denied := newQueue[job](t, nc, cfg("denied"))
	allowed := newQueue[job](t, nc, cfg("allowed"))
	ctx := ctxFor(t, 60*time.Second)
	for i := range 4 {
		for _, q := range []*workqueue.Queue[job]{denied, allowed} {
			if err := q.Enqueue(ctx, job{ID: i}); err != nil {
				t.Fatal(err)
			}
		}
	}
	settle := []struct {
		what string
		do   func(*workqueue.Job[job]) error
	}{
		{"Ack", func(j *workqueue.Job[job]) error { return j.Ack(ctxFor(t, time.Second)) }},
		{"Fail", func(j *workqueue.Job[job]) error { return j.Fail(errors.New("try again")) }},
		{"InProgress", func(j *workqueue.Job[job]) error { return j.InProgress() }},
		{"Terminate", func(j *workqueue.Job[job]) error { return j.Terminate(errors.New("give up")) }},
	}
	for _, s := range settle {
		j, err := denied.Dequeue(ctx)
		if err != nil {
			t.Fatal(err)
		}
		err = s.do(j)
		if err == nil || !strings.Contains(err.Error(), "publish permission on $JS.ACK.>") ||
			!f.named(err.Error(), "denied") || !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("%s without permission to publish the ack: %v; want an error naming the permission", s.what, err)
		}
	}
	for _, s := range settle {
		j, err := allowed.Dequeue(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.do(j); err != nil {
			t.Errorf("%s of a job whose ack is allowed, after another queue's refusals: %v", s.what, err)
		}
	}
}

// TestAnEnqueueAfterAPermissionWasGrantedIsNotTakenForRefused: the
// refusal of a publish stays the connection's last error until another
// error replaces it. An enqueue refused once, then allowed (the operator
// granted the permission and reloaded the server), took that old refusal
// for the cause of any later transient failure: here its stream was
// removed, and instead of making it again and storing the job, Enqueue
// failed at once saying the permission was missing.
func TestAnEnqueueAfterAPermissionWasGrantedIsNotTakenForRefused(t *testing.T) {
	nc, grant := natsDenyingThenGranting(t, "stale.queue")
	cfg := testConfig(t)
	cfg.Name = "stale"
	cfg.EnqueueTimeout = 10 * time.Second
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 60*time.Second)
	if err := q.Enqueue(ctx, job{ID: 1}); !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("Enqueue without the permission: %v; want it refused", err)
	}

	grant()
	if err := q.Enqueue(ctx, job{ID: 2}); err != nil {
		t.Fatalf("Enqueue once the permission was granted: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, "stale"); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(ctx, job{ID: 3}); err != nil {
		t.Fatalf("Enqueue after its stream was removed, the permission granted long before: %v; want the stream made again and the job stored", err)
	}
}

// TestAConsumerErrorAfterAPermissionWasGrantedIsNotTakenForRefused: as
// for enqueues, a consumer refused once, then allowed, took that old
// refusal for the cause of a later failure to create it: here another
// group's consumer of the same jobs, which a work-queue stream does not
// allow, and Consume said the user needed a permission it had.
func TestAConsumerErrorAfterAPermissionWasGrantedIsNotTakenForRefused(t *testing.T) {
	nc, grant := natsDenyingThenGranting(t, "$JS.API.CONSUMER.>")
	cfg := testConfig(t)
	cfg.EnqueueTimeout = 2 * time.Second // Consume's bound on creating the consumer
	q := newQueue[job](t, nc, cfg)
	handler := workqueue.HandlerFunc[job](func(context.Context, *workqueue.Job[job]) error { return nil })
	c, err := q.Consume(handler)
	if err == nil {
		shutdown(t, c)
	}
	if !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("Consume without the permission: %v; want it refused", err)
	}

	grant()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 30*time.Second)
	if _, err := js.CreateConsumer(ctx, cfg.Name, jetstream.ConsumerConfig{
		Durable: "another-group", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: cfg.Subject,
	}); err != nil {
		t.Fatal(err)
	}
	c, err = q.Consume(handler)
	if err == nil {
		shutdown(t, c)
		t.Fatal("Consume beside another group's consumer succeeded")
	}
	if errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(err.Error(), "permission") {
		t.Fatalf("Consume beside another group's consumer, the permission granted long before: %v; want the server's error, not a refusal", err)
	}
}

// TestAConsumerWhoseAcksTheServerRefusesSaysSo: Consume acks a job without
// waiting for an answer, and the server refuses an ack (for a NATS user
// who may not publish to $JS.ACK.>) only in an asynchronous error. Such a
// consumer ran every job again after each ack_wait, with nothing said; it
// now logs an error naming the permission when the job comes back.
func TestAConsumerWhoseAcksTheServerRefusesSaysSo(t *testing.T) {
	for _, f := range ackForms {
		t.Run(f.name, func(t *testing.T) { consumerAcksRefused(t, f) })
	}
}

func consumerAcksRefused(t *testing.T, f ackForm) {
	nc := startNATSWithUserAcking(t, &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.ACK.>"}},
		Subscribe: &server.SubjectPermission{Allow: []string{">"}},
	}, f)
	cfg := testConfig(t)
	cfg.AckWait = time.Second
	var logs testutil.SyncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	q := newQueue[job](t, nc, cfg)
	if err := q.Enqueue(ctxFor(t, 10*time.Second), job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int64
	consume(t, q, func(context.Context, *workqueue.Job[job]) error {
		runs.Add(1)
		return nil
	})
	testutil.Eventually(t, 20*time.Second, "an error naming the refused permission logged", func() bool {
		return strings.Contains(logs.String(), "needs publish permission on $JS.ACK.>") && f.named(logs.String(), cfg.Name)
	})
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("logs %s; want the refusal logged as an error", logs.String())
	}
	if runs.Load() < 2 {
		t.Errorf("the handler ran %d times; the refusal is said when the job comes back", runs.Load())
	}
}

// TestAnotherSubscriptionRefusedIsNotTakenForTheConsumers: the server
// refusing a subscription of another part of the program, on the same
// connection, while Dequeue waits for a job, was taken for the refusal of
// the consumer's own inbox: Dequeue failed saying the user needed
// subscribe permission on _INBOX.>, which it had. Only a refused inbox
// counts now, and Dequeue waits for its job as usual.
func TestAnotherSubscriptionRefusedIsNotTakenForTheConsumers(t *testing.T) {
	nc := startNATSWithUser(t, &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{">"}},
		Subscribe: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"forbidden"}},
	})
	cfg := testConfig(t)
	q := newQueue[job](t, nc, cfg)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 30*time.Second)
	dequeued := make(chan error, 1)
	go func() {
		_, err := q.Dequeue(ctxFor(t, 3*time.Second))
		dequeued <- err
	}()
	// Once the consumer holds Dequeue's pull request, Dequeue is waiting.
	testutil.EventuallyNoError(t, 10*time.Second, "Dequeue's pull request waiting", func() error {
		c, err := js.Consumer(ctx, cfg.Name, "worker-group")
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumWaiting == 0 {
			return errors.New("no pull request waiting")
		}
		return nil
	})
	sub, err := nc.SubscribeSync("forbidden")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.FlushWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := nc.LastError(); err == nil || !strings.Contains(err.Error(), `"forbidden"`) {
		t.Fatalf("last error %v; want the refused subscription to forbidden", err)
	}
	if err := <-dequeued; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dequeue from an empty queue, while another subscription was refused: %v; want its context's deadline", err)
	}
}

// natsDenyingThenGranting starts a NATS server with JetStream and connects
// as a user who may not publish to deny, until grant reloads the server
// with that permission given. Refusals are not logged.
func natsDenyingThenGranting(t *testing.T, deny string) (nc *nats.Conn, grant func()) {
	t.Helper()
	user := func(deny ...string) []*server.User {
		return []*server.User{{Username: "worker", Password: "pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: deny},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}},
		}}}
	}
	var opts *server.Options
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, Configure: func(o *server.Options) {
		o.Users = user(deny)
		opts = o
	}})
	nc = connect(t, ns.ClientURL(), nats.UserInfo("worker", "pw"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	return nc, func() {
		t.Helper()
		granted := opts.Clone()
		granted.Users = user()
		if err := ns.Server().ReloadOptions(granted); err != nil {
			t.Fatalf("reload: %v", err)
		}
	}
}

// TestAJobWhoseAcksTheServerRefusesIsDeadLetteredNamingThePermission: a
// job whose acks are all refused comes back until max_deliver and is then
// dead-lettered as expired. Its error listed a hung handler, a dead
// consumer and a shutdown as the causes, never the one at work here.
func TestAJobWhoseAcksTheServerRefusesIsDeadLetteredNamingThePermission(t *testing.T) {
	nc := startNATSWithUser(t, &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.ACK.>"}},
		Subscribe: &server.SubjectPermission{Allow: []string{">"}},
	})
	cfg := testConfig(t)
	cfg.AckWait = time.Second
	cfg.MaxDeliver = 2
	q := newQueue[job](t, nc, cfg)
	ctx := ctxFor(t, 30*time.Second)
	if err := q.Enqueue(ctx, job{ID: 1}); err != nil {
		t.Fatal(err)
	}
	consume(t, q, func(context.Context, *workqueue.Job[job]) error { return nil })
	var dead []workqueue.DeadJob[job]
	testutil.Eventually(t, 20*time.Second, "the job dead-lettered", func() bool {
		var err error
		dead, err = q.DeadLetters(ctx, 10)
		return err == nil && len(dead) > 0
	})
	if d := dead[0]; d.Reason != "expired" || !strings.Contains(d.Error, "$JS.ACK.>") {
		t.Fatalf("dead letter: reason %q, error %q; want expired, naming $JS.ACK.> among the causes", d.Reason, d.Error)
	}
}
