package workqueue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/internal/jsconsume"
	"github.com/loomrt/loom/internal/jsstream"
	"github.com/loomrt/loom/internal/natsrefusal"
	"github.com/loomrt/loom/metrics"
	"github.com/loomrt/loom/objectstore"
)

// Stream metadata Loom writes on its queues, so that tools (loom queue)
// can find them and read their jobs.
const (
	metaKind       = "loom.kind"
	metaCodec      = "loom.codec"
	metaGroup      = "loom.group"
	metaMaxDeliver = "loom.max_deliver"
	metaDeadLetter = "loom.dead_letter"
	metaSubject    = "loom.subject"
	metaBucket     = "loom.object_bucket"
	metaStorage    = "loom.storage"
	metaLarge      = "loom.large_payloads"
	metaQueue      = "loom.queue"
	kindQueue      = "queue"
	kindDeadLetter = "dead_letter"
	codecBytes     = "bytes"
)

// KeyHeader carries the idempotency key a job was enqueued with.
const KeyHeader = "Loom-Key"

// Queue is a durable queue of jobs of type T on a JetStream stream with
// WorkQueue retention: each job is delivered to one worker, kept until a
// worker acknowledges it, retried with backoff when its handler fails, and
// moved to a dead-letter stream after MaxDeliver attempts. It is safe for
// concurrent use. Shutdown waits for its asynchronous enqueues; Close
// releases it at once.
type Queue[T any] struct {
	cfg      Config
	nc       *nats.Conn
	js       jetstream.JetStream // sync calls, consuming
	raw      bool                // T is []byte
	stream   jetstream.Stream
	consMu   sync.Mutex
	consumer jetstream.Consumer
	payloads *objectstore.Offloader
	m        *metrics.Queue
	settler  *jsconsume.Settler
	pub      *publisher
	tracer   func() trace.Tracer // the runtime's, for a queue from Open

	restoreMu sync.Mutex
	restored  time.Time // when restore last made sure of the streams

	ackRefusal atomic.Pointer[error] // the last refusal of an ack logged
}

// New creates the queue cfg describes, or updates it to cfg if it exists:
// its stream and its dead-letter stream; the durable consumer its workers
// share is created or updated by the first Consume or Dequeue, so that
// processes that only enqueue leave the consumer's settings alone. It is
// idempotent; every process using the queue may call it. A setting the
// server cannot change on an existing stream (its storage, say) is an
// error naming the stream and the setting.
func New[T any](ctx context.Context, nc *nats.Conn, cfg Config) (*Queue[T], error) {
	cfg, err := cfg.resolved()
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("workqueue: %w", err)
	}
	q := &Queue[T]{
		cfg:    cfg,
		nc:     nc,
		js:     js,
		tracer: globalTracer,
		raw:    reflect.TypeFor[T]() == reflect.TypeFor[[]byte](),
	}
	if cfg.Metrics != nil {
		q.m = cfg.Metrics.Queue(cfg.Name)
	} else {
		q.m = metrics.NopQueue()
	}
	q.payloads, err = objectstore.NewOffloader(nc, js, objectstore.OffloadConfig{
		Policy: cfg.LargePayloads,
		Bucket: objectstore.Config{Bucket: cfg.ObjectBucket, Storage: cfg.Storage, Replicas: cfg.Replicas, TTL: cfg.DeadLetterMaxAge},
		Limit:  cfg.MaxPayload,
	})
	if err != nil {
		return nil, fmt.Errorf("workqueue: queue %s: %w", cfg.Name, err)
	}
	if err := q.ensure(ctx); err != nil {
		return nil, err
	}
	q.settler = &jsconsume.Settler{
		Queue:             cfg.Name,
		Group:             cfg.Group,
		JS:                js,
		Policy:            q.policy(),
		DeadLetterSubject: deadLetterSubject(cfg.Name),
		Payloads:          q.payloads,
		DeleteAfterAck:    true,
		Metrics:           q.m,
		Log:               cfg.Logger,
	}
	q.pub, err = newPublisher(nc, cfg, q.m, cfg.Logger, q.restore)
	if err != nil {
		return nil, err
	}
	return q, nil
}

func (q *Queue[T]) policy() jsconsume.Policy {
	c := q.cfg
	return jsconsume.Policy{
		AckWait:        c.AckWait,
		HandlerTimeout: c.HandlerTimeout,
		MaxDeliver:     c.MaxDeliver,
		BackoffInitial: c.BackoffInitial,
		BackoffMax:     c.BackoffMax,
		BackoffJitter:  c.BackoffJitter,
	}
}

func (q *Queue[T]) codecName() string {
	if q.raw {
		return codecBytes
	}
	return q.cfg.Codec.Name()
}

// ensure creates the streams when they are absent and adopts them as they
// are when present (internal/jsstream's rule: an operator's limits are
// never changed). A stream created elsewhere (the seed's NATSQueue makes
// one with limits retention on Name.*) is adopted if its subjects take
// the queue's subject, with a warning that says which guarantees change.
func (q *Queue[T]) ensure(ctx context.Context) error {
	c := q.cfg
	storage, err := objectstore.StorageType(c.Storage)
	if err != nil {
		return fmt.Errorf("workqueue: queue %s: %w", c.Name, err)
	}
	if err := q.checkNames(ctx); err != nil {
		return err
	}
	q.stream, _, err = jsstream.Ensure(ctx, q.js, jetstream.StreamConfig{
		Name:        c.Name,
		Description: "Loom work queue",
		Subjects:    []string{c.Subject},
		Retention:   jetstream.WorkQueuePolicy,
		Discard:     jetstream.DiscardNew, // a full queue refuses jobs; it never drops old ones
		MaxMsgs:     int64(c.MaxMsgs),
		MaxBytes:    int64(c.MaxBytes),
		MaxAge:      c.MaxAge,
		Storage:     storage,
		Replicas:    c.Replicas,
		Duplicates:  duplicateWindow(c.DuplicateWindow, c.MaxAge),
		Metadata: map[string]string{
			metaKind:       kindQueue,
			metaCodec:      q.codecName(),
			metaGroup:      c.Group,
			metaMaxDeliver: strconv.Itoa(c.MaxDeliver),
			metaDeadLetter: deadLetterStream(c.Name),
			metaSubject:    c.Subject,
			metaBucket:     c.ObjectBucket,
			metaStorage:    c.Storage,
			metaLarge:      c.LargePayloads,
		},
	}, c.Logger)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeSubjectOverlap {
			return fmt.Errorf("workqueue: create stream %s: subject %s is taken by another stream (%w); give queue %s a subject of its own (Config.Subject) or use that stream's name as the queue's",
				c.Name, c.Subject, err, c.Name)
		}
		return streamError(c.Name, err)
	}
	have := q.stream.CachedInfo().Config
	if !jsstream.Covers(have.Subjects, c.Subject) {
		return fmt.Errorf("%w: stream %s exists with subjects %v, which do not take the queue's subject %s; add it (nats stream edit %s --subjects ...), set the queue's Subject to one of them, or use another queue name",
			ErrStreamMismatch, c.Name, have.Subjects, c.Subject, c.Name)
	}
	if have.Retention != jetstream.WorkQueuePolicy {
		c.Logger.Warn(fmt.Sprintf("workqueue: queue %s adopts stream %s, created elsewhere with %s retention instead of work-queue retention; "+
			"jobs are still delivered to one worker of group %s and acknowledged after the handler succeeds, but an acknowledged job stays in the stream until its limits remove it, "+
			"a second consumer group (or a new one) receives every job the stream still holds, and Info's Jobs counts handled jobs too",
			c.Name, c.Name, have.Retention, c.Group), "queue", c.Name, "retention", have.Retention.String())
	}
	_, _, err = jsstream.Ensure(ctx, q.js, jetstream.StreamConfig{
		Name:        deadLetterStream(c.Name),
		Description: "Loom dead letters of work queue " + c.Name,
		Subjects:    []string{deadLetterSubject(c.Name)},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      c.DeadLetterMaxAge,
		Storage:     storage,
		Replicas:    c.Replicas,
		Duplicates:  duplicateWindow(c.DuplicateWindow, c.DeadLetterMaxAge),
		Metadata:    map[string]string{metaKind: kindDeadLetter, metaQueue: c.Name},
	}, c.Logger)
	if err != nil {
		return streamError(deadLetterStream(c.Name), err)
	}
	return nil
}

// checkNames refuses a queue whose streams are another queue's: a queue
// keeps its dead letters in the stream <name>_dlq, so the queues "x" and
// "x_dlq" would share one. It looks before the streams are ensured, which
// would write this queue's labels over the other queue's.
func (q *Queue[T]) checkNames(ctx context.Context) error {
	c := q.cfg
	md, err := q.labels(ctx, c.Name)
	if err != nil {
		return streamError(c.Name, err)
	}
	if md[metaKind] == kindDeadLetter {
		return fmt.Errorf("%w: stream %s is the dead-letter stream of queue %s (a queue keeps its dead letters in <name>_dlq); give this queue another name",
			ErrStreamMismatch, c.Name, md[metaQueue])
	}
	dl := deadLetterStream(c.Name)
	md, err = q.labels(ctx, dl)
	if err != nil {
		return streamError(dl, err)
	}
	if md[metaKind] == kindQueue {
		return fmt.Errorf("%w: stream %s, where queue %s would keep its dead letters, is the stream of work queue %s; rename one of the two queues (a queue keeps its dead letters in <name>_dlq)",
			ErrStreamMismatch, dl, c.Name, dl)
	}
	return nil
}

// labels returns the metadata of stream name, nil if there is no such
// stream.
func (q *Queue[T]) labels(ctx context.Context, name string) (map[string]string, error) {
	st, err := q.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return st.CachedInfo().Config.Metadata, nil
}

// duplicateWindow is window, cut to a stream's max age when that is
// shorter: nats-server refuses a window longer than the stream keeps its
// messages, and cuts its own default window the same way.
func duplicateWindow(window, maxAge time.Duration) time.Duration {
	if maxAge > 0 && window > maxAge {
		return maxAge
	}
	return window
}

// restoreEvery bounds how often restore asks the server about the
// streams, however many enqueues find them gone at once.
const restoreEvery = 250 * time.Millisecond

// restoreWait bounds one restore, so that a JetStream slow to answer (a
// leader election) leaves the caller's deadline to the retries.
const restoreWait = 2 * time.Second

// restore makes the queue's streams again when they went away under a
// running queue: a server restarted without them (memory storage), or an
// operator removed them. It follows New's rule: created when absent, kept
// as they are when present. A stream that is there is left alone: no
// stream answers during a leader election too.
func (q *Queue[T]) restore(ctx context.Context) error {
	q.restoreMu.Lock()
	defer q.restoreMu.Unlock()
	if time.Since(q.restored) < restoreEvery {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, restoreWait)
	defer cancel()
	if _, err := q.js.Stream(ctx, q.cfg.Name); !errors.Is(err, jetstream.ErrStreamNotFound) {
		return err
	}
	if err := q.ensure(ctx); err != nil {
		return err
	}
	q.cfg.Logger.Warn("workqueue: the queue's streams were gone (a server restarted without them, or they were removed); made them again",
		"queue", q.cfg.Name)
	q.restored = time.Now()
	return nil
}

// cons returns the queue's consumer, creating or updating it on first
// use: processes that only enqueue never touch the consumer's settings.
func (q *Queue[T]) cons(ctx context.Context) (jetstream.Consumer, error) {
	q.consMu.Lock()
	c := q.consumer
	q.consMu.Unlock()
	if c != nil {
		return c, nil
	}
	return q.createConsumer(ctx)
}

// createConsumer creates or updates the durable consumer and keeps it.
func (q *Queue[T]) createConsumer(ctx context.Context) (jetstream.Consumer, error) {
	c, err := q.newConsumer(ctx)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if rerr := q.restore(ctx); rerr == nil {
			c, err = q.newConsumer(ctx)
		}
	}
	if err == nil {
		q.consMu.Lock()
		q.consumer = c
		q.consMu.Unlock()
	}
	return c, err
}

func (q *Queue[T]) newConsumer(ctx context.Context) (jetstream.Consumer, error) {
	c := q.cfg
	before := q.nc.LastError()
	cons, err := q.js.CreateOrUpdateConsumer(ctx, c.Name, jetstream.ConsumerConfig{
		Durable:       c.Group,
		Description:   "Loom workers of queue " + c.Name,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    -1, // Loom counts attempts and dead-letters (see internal/jsconsume)
		MaxAckPending: c.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: c.Subject, // an adopted stream may carry other subjects
	})
	if err != nil {
		if perr := q.consumerRefused(before); perr != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			err = fmt.Errorf("%w (%w): this process's NATS user needs publish permission on $JS.API.CONSUMER.> (at least $JS.API.CONSUMER.CREATE.%s.>) to consume queue %s", err, perr, c.Name, c.Name)
		}
		return nil, fmt.Errorf("workqueue: create or update consumer %s of queue %s: %w", c.Group, c.Name, hint(err))
	}
	return cons, nil
}

// consumerRefused returns the connection's last error if it is the server
// refusing the request that creates this queue's consumer, and came after
// before, the last error when the request went out: the server drops it
// and says so only in an asynchronous error, so the request times out
// naming no cause. The last error stays until another replaces it: ask
// only after the request failed, and never take an old refusal (of a
// permission granted since) for the cause.
func (q *Queue[T]) consumerRefused(before error) error {
	err := q.nc.LastError()
	if err == before {
		return nil
	}
	kind, subject, ok := natsrefusal.Read(err)
	if !ok || kind != metrics.PermissionPublish || !strings.HasPrefix(subject, "$JS.API.CONSUMER.") ||
		!strings.Contains(subject, "."+q.cfg.Name+"."+q.cfg.Group) {
		return nil
	}
	return err
}

// errCodeSubjectOverlap is the server's error code for a stream whose
// subjects another stream already takes.
const errCodeSubjectOverlap jetstream.ErrorCode = 10065

func streamError(name string, err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (strings.Contains(apiErr.Description, "can not change") || strings.Contains(apiErr.Description, "cannot change")) {
		return fmt.Errorf("workqueue: stream %s exists with settings this queue cannot change (%w); delete it (nats stream rm %s) or use another queue name", name, err, name)
	}
	return fmt.Errorf("workqueue: create stream %s: %w", name, hint(err))
}

// hint adds what to do to errors of a JetStream API call on a server
// without JetStream. Such a server does not answer the API at all:
// nats.go reports no responders, which names neither JetStream nor the
// remedy.
func hint(err error) error {
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("%w (start nats-server with -js, or `loom up`)", err)
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("%w: nothing answers the JetStream API; JetStream is not enabled on the server or for this account (start nats-server with -js, or `loom up`)", err)
	}
	return err
}

// Name returns the queue's name, which is its stream's name.
func (q *Queue[T]) Name() string { return q.cfg.Name }

// Config returns the queue's configuration, defaults filled in.
func (q *Queue[T]) Config() Config { return q.cfg }

// encode turns a job into a message body.
func (q *Queue[T]) encode(job T) ([]byte, error) {
	if q.raw {
		return any(job).([]byte), nil
	}
	b, err := q.cfg.Codec.Marshal(nil, job)
	if err != nil {
		return nil, fmt.Errorf("workqueue: encoding a job for queue %s: %w", q.cfg.Name, err)
	}
	return b, nil
}

// decode turns a message body into a job.
func (q *Queue[T]) decode(data []byte) (T, error) {
	var v T
	if q.raw {
		return any(data).(T), nil
	}
	if err := q.cfg.Codec.Unmarshal(data, &v); err != nil {
		if q.cfg.Codec.Name() != codec.JSONName && looksLikeJSON(data) {
			return v, fmt.Errorf("workqueue: job of queue %s does not decode as %T with %s; it looks like JSON; set queue.codec=json (Config.Codec = codec.JSON) on every process of the queue: %w", q.cfg.Name, v, q.cfg.Codec.Name(), err)
		}
		return v, fmt.Errorf("workqueue: job does not decode as %T with %s: %w", v, q.cfg.Codec.Name(), err)
	}
	return v, nil
}

// Shutdown stops the queue's enqueueing gracefully: it waits for the
// asynchronous enqueues still awaiting the server's acknowledgement, then
// for the Enqueue calls under way, until ctx ends, then releases the
// queue's publisher (an Enqueue still under way then returns ErrClosed).
// It returns the errors of asynchronous enqueues not yet reported by
// Flush, or ctx's error naming how many were still awaited. Consumers and jobs from Dequeue are not
// affected (shut consumers down with Consumer.Shutdown); the connection
// stays open. Enqueues fail afterwards; calling Shutdown or Close again
// returns nil.
func (q *Queue[T]) Shutdown(ctx context.Context) error {
	return q.pub.close(ctx, true)
}

// Close releases the queue's publisher now, without waiting: asynchronous
// enqueues still awaiting acknowledgement are reported failed by their
// Pending, and Enqueue calls under way return ErrClosed (a job may still
// have been stored). It returns the errors of
// asynchronous enqueues not yet reported by Flush, and how many were
// abandoned. Consumers and jobs from Dequeue are not affected; the
// connection stays open. Calling Shutdown or Close again returns nil.
func (q *Queue[T]) Close() error {
	return q.pub.close(context.Background(), false)
}

// Info describes a queue's state.
type Info struct {
	// Name is the queue's name and Subject the subject of its jobs.
	Name    string `json:"name"`
	Subject string `json:"subject"`
	// Group is the consumer the workers share.
	Group string `json:"group"`
	// Codec names the encoding of its jobs ("bytes" for []byte).
	Codec string `json:"codec"`
	// Jobs and Bytes are what the stream holds: jobs not yet acknowledged.
	Jobs  uint64 `json:"jobs"`
	Bytes uint64 `json:"bytes"`
	// Pending counts jobs not yet delivered, InFlight jobs delivered and
	// not yet settled, Redelivered jobs delivered more than once and
	// waiting for their ack.
	Pending     uint64 `json:"pending"`
	InFlight    uint64 `json:"in_flight"`
	Redelivered uint64 `json:"redelivered"`
	// Waiting is the number of pull requests workers have outstanding.
	Waiting int `json:"waiting"`
	// DeadLetters counts the jobs in the dead-letter stream.
	DeadLetters uint64 `json:"dead_letters"`
	// MaxDeliver, Storage and Replicas are from the queue's settings.
	MaxDeliver int    `json:"max_deliver"`
	Storage    string `json:"storage"`
	Replicas   int    `json:"replicas"`
	// Created is when the stream was created.
	Created time.Time `json:"created"`
}

// Info returns the queue's state as the server reports it now.
func (q *Queue[T]) Info(ctx context.Context) (Info, error) {
	return inspect(ctx, q.js, q.cfg.Name)
}

// looksLikeJSON reports whether data is a JSON object or array, as a job
// enqueued by the seed's Python code (msgspec.json) is.
func looksLikeJSON(data []byte) bool {
	t := bytes.TrimSpace(data)
	return len(t) > 1 && (t[0] == '{' || t[0] == '[') && json.Valid(t)
}
