package eventbus

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"hash/maphash"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/internal/jsconsume"
	"github.com/loomrt/loom/internal/natsrefusal"
	"github.com/loomrt/loom/metrics"
)

// RegisterConsumer starts handling the messages of topic as a member of
// group, on nameServer ("" for the bus's servers), and returns once the
// consumer is subscribed (on Core NATS, once the server has confirmed the
// subscription, so that what is sent afterwards reaches the group). Members of one group share its messages; every
// group gets every message. With JetStream the group is a durable consumer
// of the topic's stream: it is created (or updated) here, receives what was
// sent while no member ran, and redelivers after AckWait what a member
// took and never settled. On Core NATS it is a queue group: messages sent
// while no member runs are lost to it, and retries happen in the member
// that received the message. Bus.Shutdown or Bus.Close stops it.
func (b *Bus) RegisterConsumer(nameServer, topic, group string, handler ConsumerHandler, opts ...ConsumerOpt) error {
	if err := checkTopic(topic); err != nil {
		return err
	}
	if err := checkGroup(group); err != nil {
		return err
	}
	if f, ok := handler.(HandlerFunc); handler == nil || ok && f == nil {
		return fmt.Errorf("eventbus: consumer of topic %s, group %s: the handler is nil; RegisterConsumer needs one", topic, group)
	}
	q := b.cfg.Queue
	var o ConsumerOption
	for _, opt := range opts {
		opt(&o)
	}
	if o.Concurrency < 0 || o.Concurrency > maxConcurrency {
		return fmt.Errorf("eventbus: consumer of topic %s, group %s: WithConcurrency(%d): want 1 to %d, or 0 for queue.concurrency (%d)",
			topic, group, o.Concurrency, maxConcurrency, q.Concurrency)
	}
	if o.MaxDeliver < 0 {
		return fmt.Errorf("eventbus: consumer of topic %s, group %s: WithMaxDeliver(%d): want at least 1, or 0 for queue.max_deliver (%d)",
			topic, group, o.MaxDeliver, q.MaxDeliver)
	}
	if o.Concurrency == 0 {
		o.Concurrency = q.Concurrency
	}
	if o.MaxDeliver == 0 {
		o.MaxDeliver = q.MaxDeliver
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.connectTimeout()+5*time.Second)
	defer cancel()
	c, err := b.conn(ctx, nameServer)
	if err != nil {
		return err
	}
	m := metrics.NopQueue()
	if b.cfg.Metrics != nil {
		m = b.cfg.Metrics.Queue(topic + "/" + group)
	}
	policy := jsconsume.Policy{
		AckWait:        q.AckWait,
		HandlerTimeout: q.HandlerTimeout,
		MaxDeliver:     o.MaxDeliver,
		BackoffInitial: q.BackoffInitial,
		BackoffMax:     q.BackoffMax,
		BackoffJitter:  b.cfg.BackoffJitter,
	}
	var s stopper
	if q.EventBusJetStream {
		s, err = b.startJetStream(ctx, c, topic, group, handler, o, policy, m)
	} else {
		s, err = b.startCore(ctx, c, topic, group, handler, o, policy, m)
	}
	if err != nil {
		return err
	}
	if err := b.addConsumer(s); err != nil {
		_ = s.shutdown(context.Background())
		return err
	}
	return nil
}

// maxConcurrency is queue.concurrency's upper bound.
const maxConcurrency = 100000

// durableName is group's JetStream consumer: the group itself, as Coze
// Studio names it, unless it holds a path separator, which consumer names
// may not; then the group with those replaced and a hash of the name, so
// that distinct groups never share a consumer (and its messages).
func durableName(group string) string {
	if !strings.ContainsAny(group, `/\`) {
		return group
	}
	h := fnv.New32a()
	h.Write([]byte(group))
	return strings.NewReplacer("/", "_", `\`, "_").Replace(group) + fmt.Sprintf("_%08x", h.Sum32())
}

// jsConsumer is a group on JetStream.
type jsConsumer struct{ r *jsconsume.Runner }

func (c *jsConsumer) shutdown(ctx context.Context) error { return c.r.Shutdown(ctx) }

func (b *Bus) startJetStream(ctx context.Context, c *conn, topic, group string, h ConsumerHandler, o ConsumerOption, policy jsconsume.Policy, m *metrics.Queue) (stopper, error) {
	durable := durableName(group)
	stream := StreamName(topic)
	create := func(ctx context.Context) (jetstream.Consumer, error) {
		// Made again after the server lost it, the consumer may need
		// the stream made again too.
		if err := b.ensureStreams(ctx, c, topic, false); err != nil {
			return nil, err
		}
		if err := b.ensureStreams(ctx, c, topic, true); err != nil {
			return nil, err
		}
		cons, err := c.js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
			Durable:       durable,
			Description:   "Loom EventBus group " + group + " of topic " + topic,
			FilterSubject: topic,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       policy.AckWait,
			MaxDeliver:    -1, // Loom counts attempts and dead-letters
			MaxAckPending: jsconsume.DefaultMaxAckPending,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err != nil {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				c.forget(topic)
			}
			return nil, fmt.Errorf("eventbus: create or update consumer %s of stream %s: %w", durable, stream, hint(err))
		}
		return cons, nil
	}
	cons, err := create(ctx)
	if err != nil {
		return nil, err
	}
	settler := &jsconsume.Settler{
		Queue:             stream,
		Group:             durable,
		JS:                c.js,
		Policy:            policy,
		DeadLetterSubject: deadLetterSubject(topic, group),
		Payloads:          c.payloads,
		Metrics:           m,
		Log:               b.log,
	}
	cfg := jsconsume.Config{
		Settler:     settler,
		Consumer:    cons,
		Recreate:    create,
		Concurrency: o.Concurrency,
		Handler: func(ctx context.Context, d *jsconsume.Delivery) error {
			hdr := d.Msg.Headers()
			msg := &Message{
				Topic: topic, Group: group, Body: d.Data,
				ShardingKey: shardingKey(hdr),
				Deliveries:  int(d.Meta.NumDelivered),
				Header:      hdr,
			}
			return b.traced(ctx, msg, func(ctx context.Context) error { return h.HandleMessage(ctx, msg) })
		},
	}
	if o.Orderly {
		cfg.LaneKey = shardingKey
	}
	r, err := jsconsume.Start(cfg)
	if err != nil {
		return nil, fmt.Errorf("eventbus: %w", err)
	}
	return &jsConsumer{r: r}, nil
}

// coreConsumer is a group on a Core NATS queue group: at most once from
// the server, retried with backoff in this process.
type coreConsumer struct {
	b            *Bus
	c            *conn
	topic, group string
	h            ConsumerHandler
	policy       jsconsume.Policy
	m            *metrics.Queue
	sub          *nats.Subscription
	work         chan *nats.Msg
	lanes        []chan *nats.Msg
	seed         maphash.Seed
	orderly      bool
	base         context.Context
	kill         context.CancelFunc
	subClosed    chan struct{}
	workersDone  chan struct{}
	once         sync.Once
	running      atomic.Int64 // handlers running
}

func (b *Bus) startCore(ctx context.Context, c *conn, topic, group string, h ConsumerHandler, o ConsumerOption, policy jsconsume.Policy, m *metrics.Queue) (stopper, error) {
	cc := &coreConsumer{
		b: b, c: c, topic: topic, group: group, h: h, policy: policy, m: m,
		work:        make(chan *nats.Msg),
		seed:        maphash.MakeSeed(),
		orderly:     o.Orderly,
		subClosed:   make(chan struct{}),
		workersDone: make(chan struct{}),
	}
	cc.base, cc.kill = context.WithCancel(context.Background())
	if o.Orderly {
		cc.lanes = make([]chan *nats.Msg, o.Concurrency)
		for i := range cc.lanes {
			cc.lanes[i] = make(chan *nats.Msg)
		}
	}
	var wg sync.WaitGroup
	for i := range o.Concurrency {
		var lane chan *nats.Msg
		if cc.lanes != nil {
			lane = cc.lanes[i]
		}
		wg.Go(func() { cc.worker(lane) })
	}
	sub, err := c.nc.QueueSubscribe(topic, group, cc.dispatch)
	if err != nil {
		cc.kill()
		wg.Wait()
		return nil, fmt.Errorf("eventbus: subscribe to topic %s as group %s: %w", topic, group, err)
	}
	// Messages queue up in the subscription while every worker is busy;
	// allow as many as nats.go allows by default bytes-wise.
	_ = sub.SetPendingLimits(-1, 64<<20)
	sub.SetClosedHandler(func(string) {
		cc.closeWork()
	})
	cc.sub = sub
	// The subscription travels to the server asynchronously: until it is
	// there, messages sent from other connections are lost to the group.
	// A round trip makes sure of it before RegisterConsumer returns.
	if err := c.nc.FlushWithContext(ctx); err != nil {
		_ = sub.Unsubscribe()
		cc.kill()
		wg.Wait()
		return nil, fmt.Errorf("eventbus: subscribe to topic %s as group %s: the server %s did not confirm the subscription: %w",
			topic, group, c.nc.ConnectedUrlRedacted(), err)
	}
	// A refused subscription is reported to the connection, before the
	// flush's answer, and stays in place receiving nothing.
	if err := c.nc.LastError(); refusedSubscription(err, topic) {
		_ = sub.Unsubscribe()
		cc.kill()
		wg.Wait()
		return nil, fmt.Errorf("eventbus: subscribe to topic %s as group %s: the NATS server refused the subscription (%w): this process's NATS user needs subscribe permission on %s",
			topic, group, err, topic)
	}
	go func() {
		wg.Wait()
		cc.kill()
		close(cc.workersDone)
	}()
	return cc, nil
}

// closeWork ends the workers' input once the subscription is closed and
// drained.
func (cc *coreConsumer) closeWork() {
	cc.once.Do(func() {
		close(cc.subClosed)
		close(cc.work)
		for _, l := range cc.lanes {
			close(l)
		}
	})
}

// dispatch hands a message to a worker; it runs on the subscription's
// goroutine and blocks while all workers are busy.
func (cc *coreConsumer) dispatch(m *nats.Msg) {
	ch := cc.work
	if cc.lanes != nil {
		if key := shardingKey(m.Header); key != "" {
			ch = cc.lanes[maphash.String(cc.seed, key)%uint64(len(cc.lanes))]
		}
	}
	select {
	case ch <- m:
	case <-cc.base.Done():
	}
}

func (cc *coreConsumer) worker(lane chan *nats.Msg) {
	work := cc.work
	for work != nil || lane != nil {
		var m *nats.Msg
		var ok bool
		select {
		case m, ok = <-work:
			if !ok {
				work = nil
				continue
			}
		case m, ok = <-lane:
			if !ok {
				lane = nil
				continue
			}
		case <-cc.base.Done():
			return
		}
		cc.handle(m)
	}
}

// handle runs the handler on m, retrying with backoff up to MaxDeliver
// attempts, then dead-letters it.
func (cc *coreConsumer) handle(m *nats.Msg) {
	body, _, err := cc.c.payloads.Resolve(cc.base, m.Header, m.Data)
	if err != nil {
		cc.deadLetter(m, jsconsume.ReasonPayload, err, 1)
		return
	}
	msg := &Message{Topic: cc.topic, Group: cc.group, Body: body, ShardingKey: shardingKey(m.Header), Header: m.Header}
	for attempt := 1; ; attempt++ {
		msg.Deliveries = attempt
		if attempt > 1 {
			cc.m.Redelivered.Inc()
		}
		err := cc.call(msg)
		if err == nil {
			cc.m.Acked.Inc()
			return
		}
		var te *jsconsume.TerminalError
		if errors.As(err, &te) {
			cc.deadLetter(m, te.Reason, te.Err, attempt)
			return
		}
		if attempt >= cc.policy.MaxDeliver {
			cc.deadLetter(m, jsconsume.ReasonFailed, err, attempt)
			return
		}
		cc.m.Nakked.Inc()
		select {
		case <-time.After(cc.policy.Backoff(attempt)):
		case <-cc.base.Done():
			cc.b.log.Warn("eventbus: shut down while a Core NATS message awaited its retry; it is lost (use JetStream to keep it)",
				"topic", cc.topic, "group", cc.group, "attempt", attempt, "err", err)
			return
		}
	}
}

func (cc *coreConsumer) call(msg *Message) (err error) {
	timeout := cc.policy.HandlerTimeout
	ctx, cancel := context.WithTimeout(cc.base, timeout)
	defer cancel()
	start := time.Now()
	cc.running.Add(1)
	defer cc.running.Add(-1)
	defer func() {
		cc.m.HandlerDuration.Observe(time.Since(start).Seconds())
		if r := recover(); r != nil {
			cc.b.log.Error("eventbus: handler panicked", "topic", cc.topic, "group", cc.group, "panic", r, "stack", string(debug.Stack()))
			err = &jsconsume.PanicError{Value: r}
		}
	}()
	return cc.b.traced(ctx, msg, func(ctx context.Context) error { return cc.h.HandleMessage(ctx, msg) })
}

// deadLetter stores m in the topic's dead-letter stream, if JetStream is
// there; on Core NATS without JetStream the message can only be logged.
func (cc *coreConsumer) deadLetter(m *nats.Msg, reason string, cause error, attempts int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h := nats.Header{}
	for k, v := range m.Header {
		h[k] = v
	}
	jsconsume.DeadLetterInfo{
		Queue: cc.topic, Group: cc.group, Subject: m.Subject, Reason: reason, Error: cause.Error(),
		Deliveries: attempts, Time: time.Now(),
	}.Header(h)
	publish := func() error {
		if err := cc.b.ensureStreams(ctx, cc.c, cc.topic, true); err != nil {
			return err
		}
		_, err := cc.c.js.PublishMsg(ctx, &nats.Msg{Subject: deadLetterSubject(cc.topic, cc.group), Header: h, Data: m.Data})
		return err
	}
	err := publish()
	if noStream(err) {
		// The stream went away (an operator's delete, a server with
		// memory storage restarted): make it again.
		cc.c.forget(cc.topic)
		err = publish()
	}
	if err != nil {
		cc.b.log.Error("eventbus: a message that failed every attempt could not be dead-lettered and is lost",
			"topic", cc.topic, "group", cc.group, "reason", reason, "attempts", attempts, "last_error", cause,
			"dead_letter_error", err, "size", strconv.Itoa(len(m.Data)))
		return
	}
	cc.m.DeadLettered.Inc()
	cc.b.log.Warn("eventbus: message moved to the dead-letter stream", "topic", cc.topic, "group", cc.group,
		"reason", reason, "attempts", attempts, "err", cause)
}

// shutdown drains the subscription: no new messages; those queued in it
// are still handled; then the workers finish. If ctx ends first, handler
// contexts are cancelled and shutdown waits up to ShutdownGrace for the
// workers to return, then abandons those in handlers that ignore it.
func (cc *coreConsumer) shutdown(ctx context.Context) error {
	// The subscription's closed handler ends the workers' input once the
	// drain is done: only then does dispatch no longer run.
	_ = cc.sub.Drain()
	// A drain waits for the server's answer to a flush, up to nats.go's
	// ten seconds while the connection is down; but then the server can
	// send nothing more, so once the subscription holds no message it is
	// simply removed.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-cc.workersDone:
			return nil
		case <-ctx.Done():
			break wait
		case <-tick.C:
			if !cc.c.nc.IsConnected() {
				if n, _, err := cc.sub.Pending(); err == nil && n == 0 {
					_ = cc.sub.Unsubscribe()
				}
			}
		}
	}
	cc.kill() // workers and dispatch return
	_ = cc.sub.Unsubscribe()
	grace := time.NewTimer(jsconsume.ShutdownGrace)
	defer grace.Stop()
	select {
	case <-cc.workersDone:
		return ctx.Err()
	case <-grace.C:
	}
	// The workers left are in handlers that ignore their context: they
	// are left to finish, as a JetStream consumer leaves them.
	n := cc.running.Load()
	if n == 0 {
		// No handler left: only a dead letter being stored, which its
		// own timeout bounds.
		<-cc.workersDone
		return ctx.Err()
	}
	cc.b.log.Error("eventbus: handlers ignored their cancelled context; abandoned", "topic", cc.topic, "group", cc.group, "handlers", n)
	return fmt.Errorf("eventbus: topic %s, group %s: %d handlers still running %s after their context was cancelled were abandoned (Core NATS keeps no copy of their messages; a handler must return when its context ends): %w",
		cc.topic, cc.group, n, jsconsume.ShutdownGrace, ctx.Err())
}

// refusedSubscription reports whether err is the NATS server's refusal of
// a subscription to subject.
func refusedSubscription(err error, subject string) bool {
	kind, refused, ok := natsrefusal.Read(err)
	return ok && kind == metrics.PermissionSubscribe && refused == subject
}
