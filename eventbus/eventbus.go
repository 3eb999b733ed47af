package eventbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/internal/jsconsume"
	"github.com/loomrt/loom/internal/jsstream"
	"github.com/loomrt/loom/metrics"
	"github.com/loomrt/loom/natsconn"
	"github.com/loomrt/loom/objectstore"
)

// ShardingKeyHeader carries a message's sharding key, as Coze Studio's
// Core NATS producer writes it (its JetStream producer writes none, and
// its consumers read none). Producers write it and
// LoomShardingKeyHeader; consumers read it, else LoomShardingKeyHeader
// (what Loom wrote alone before).
const ShardingKeyHeader = "Sharding-Key"

// LoomShardingKeyHeader is the sharding key header Loom wrote before it
// wrote Coze Studio's; producers still write it for older consumers.
const LoomShardingKeyHeader = "Loom-Sharding-Key"

// shardingKey returns the sharding key of a message's headers.
func shardingKey(h nats.Header) string {
	if k := h.Get(ShardingKeyHeader); k != "" {
		return k
	}
	return h.Get(LoomShardingKeyHeader)
}

// ErrClosed is returned by what is asked of a bus once its Shutdown or
// Close has begun, and by its producers once its consumers have stopped.
var ErrClosed = errors.New("eventbus: the bus is shut down")

// Message is one event as a consumer receives it.
type Message struct {
	// Topic and Group are those the consumer was registered with.
	Topic string
	Group string
	// Body is the event's payload (fetched from the object store if it
	// was sent by reference).
	Body []byte
	// ShardingKey is the key it was sent with, if any.
	ShardingKey string
	// Deliveries counts the attempts at this message, this one included.
	Deliveries int
	// Header is the message's NATS headers.
	Header nats.Header
}

// ConsumerHandler handles the messages of a consumer group. Returning an
// error retries the message after a backoff; after the last attempt, or at
// once if the error is Permanent, it goes to the dead-letter stream. A panic
// counts as an error.
type ConsumerHandler interface {
	HandleMessage(ctx context.Context, msg *Message) error
}

// HandlerFunc adapts a function to a ConsumerHandler.
type HandlerFunc func(ctx context.Context, msg *Message) error

// HandleMessage calls f.
func (f HandlerFunc) HandleMessage(ctx context.Context, msg *Message) error { return f(ctx, msg) }

// Permanent marks err as not worth retrying: the message goes to the
// dead-letter stream at once.
func Permanent(err error) error { return jsconsume.Terminal(jsconsume.ReasonPermanent, err) }

// Producer sends messages to one topic.
type Producer interface {
	// Send sends one message and returns once it is sent (Core NATS: the
	// server has it; JetStream: it is stored).
	Send(ctx context.Context, body []byte, opts ...SendOpt) error
	// BatchSend sends several messages, all before waiting for the
	// server, and returns once every one is sent or has failed.
	BatchSend(ctx context.Context, bodyArr [][]byte, opts ...SendOpt) error
}

// ConsumerService registers consumers.
type ConsumerService interface {
	// RegisterConsumer starts handling the messages of topic as a member
	// of group, with the NATS server(s) nameServer ("" for the bus's).
	RegisterConsumer(nameServer, topic, group string, handler ConsumerHandler, opts ...ConsumerOpt) error
}

// SendOpt tunes a send, as Coze Studio's eventbus.SendOpt does.
type SendOpt func(*SendOption)

// SendOption holds the options of a send.
type SendOption struct {
	// ShardingKey groups messages that a consumer WithOrderly handles one
	// at a time, in order. It is never used as a message id.
	ShardingKey *string
}

// WithShardingKey sets the messages' sharding key.
func WithShardingKey(key string) SendOpt {
	return func(o *SendOption) { o.ShardingKey = &key }
}

// ConsumerOpt tunes a consumer.
type ConsumerOpt func(*ConsumerOption)

// ConsumerOption holds the options of a consumer; zero values take the
// bus's configuration (the queue.* keys).
type ConsumerOption struct {
	// Orderly handles messages with the same sharding key one at a time,
	// in the order they arrive at this process. On Core NATS a retry
	// holds its key; on JetStream a failed message comes back, after its
	// backoff, behind the key's later messages.
	Orderly bool
	// Concurrency is how many messages are handled at once.
	Concurrency int
	// MaxDeliver is the number of attempts before dead-lettering.
	MaxDeliver int
}

// WithOrderly handles the messages of one sharding key one at a time.
func WithOrderly() ConsumerOpt { return func(o *ConsumerOption) { o.Orderly = true } }

// WithConsumerOrderly sets whether messages of one sharding key are
// handled one at a time: Coze Studio's option, with its shape.
func WithConsumerOrderly(orderly bool) ConsumerOpt {
	return func(o *ConsumerOption) { o.Orderly = orderly }
}

// WithConcurrency sets how many messages are handled at once (1 to
// 100000; 0 is queue.concurrency).
func WithConcurrency(n int) ConsumerOpt { return func(o *ConsumerOption) { o.Concurrency = n } }

// WithMaxDeliver sets the number of attempts before dead-lettering (0 is
// queue.max_deliver).
func WithMaxDeliver(n int) ConsumerOpt { return func(o *ConsumerOption) { o.MaxDeliver = n } }

// Config configures a Bus.
type Config struct {
	// NATS is the connection's configuration (servers, auth, TLS).
	NATS config.NATS
	// Queue holds the consumers' settings (queue.*): JetStream or Core
	// NATS (EventBusJetStream), stream storage, replicas and retention
	// (EventBusMaxAge), ack wait, attempts, backoff, concurrency, large
	// payloads. Zero values take the defaults.
	Queue config.Queue
	// JWT and Seed are a user JWT and its NKey seed (or the path of a
	// file holding the seed), from NATS_JWT_TOKEN and NATS_NKEY_SEED.
	JWT, Seed string
	// BackoffJitter removes a random fraction, up to this much, of each
	// retry delay (0 to 1).
	BackoffJitter float64
	// MaxPayload, if positive, replaces the server's max_payload as the
	// largest message sent as is (for tests).
	MaxPayload int64
	// Logger receives the bus's logs; nil is slog.Default().
	Logger *slog.Logger
	// Metrics receives each consumer group's metrics (as queue
	// "topic/group"); nil records them nowhere.
	Metrics *metrics.Metrics

	// urlSource is where NATS.URL came from, for connection errors: set
	// by ConfigFromEnv when NATS_SERVER_URL gave it.
	urlSource string
}

// Bus is an EventBus on NATS: a factory of Producers and a
// ConsumerService. It is safe for concurrent use. Shutdown drains it;
// Close stops it now.
type Bus struct {
	cfg    Config
	log    *slog.Logger
	shared *nats.Conn // given to NewWithConn; not closed by the bus

	mu        sync.Mutex
	conns     map[string]*conn // by name server; "" is the default
	consumers []stopper
	closed    bool
	done      chan struct{} // closed once shut down
	sending   int           // sends under way
	noSends   bool          // set once the consumers are drained: sends are refused
	sent      chan struct{} // made by shutdown while sends are under way; closed by the last

	tracer func() trace.Tracer // the runtime's, for a bus from Open
}

// conn is one connection of the bus, with what is built on it.
type conn struct {
	nc       *nats.Conn
	own      bool
	js       jetstream.JetStream
	pubJS    jetstream.JetStream // sends; made on first use
	payloads *objectstore.Offloader
	streams  map[string]bool // streams made sure of
	mu       sync.Mutex
}

type stopper interface {
	shutdown(ctx context.Context) error
}

// New returns a Bus that connects with cfg.NATS on first use.
func New(cfg Config) (*Bus, error) {
	cfg.Queue = cfg.Queue.WithDefaults()
	full := config.Default()
	full.Queue = cfg.Queue
	if err := full.Validate(); err != nil {
		return nil, fmt.Errorf("eventbus: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Bus{cfg: cfg, log: log, conns: make(map[string]*conn), done: make(chan struct{}), tracer: globalTracer}, nil
}

// NewWithConn returns a Bus that uses nc for the name server "" and for
// cfg.NATS.URL; it never closes nc.
func NewWithConn(nc *nats.Conn, cfg Config) (*Bus, error) {
	b, err := New(cfg)
	if err != nil {
		return nil, err
	}
	b.shared = nc
	return b, nil
}

// conn returns the connection to nameServer, connecting on first use.
func (b *Bus) conn(ctx context.Context, nameServer string) (*conn, error) {
	key := strings.TrimSpace(nameServer)
	if key == b.cfg.NATS.URL {
		key = ""
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	if c, ok := b.conns[key]; ok {
		return c, nil
	}
	c := &conn{streams: make(map[string]bool)}
	if key == "" && b.shared != nil {
		c.nc = b.shared
	} else {
		ncfg, source := b.cfg.NATS, b.cfg.urlSource
		if key != "" {
			ncfg.URL, source = key, ""
		}
		var extra []nats.Option
		if b.cfg.JWT != "" {
			seed, err := seedOf(b.cfg.Seed)
			if err != nil {
				return nil, err
			}
			extra = append(extra, nats.UserJWTAndSeed(b.cfg.JWT, seed))
		}
		nc, err := natsconn.Connect(ctx, ncfg, natsconn.WithLogger(b.log), natsconn.WithURLSource(source),
			natsconn.WithMetrics(b.cfg.Metrics), natsconn.WithNATSOptions(extra...))
		if err != nil {
			if b.cfg.JWT != "" && errors.Is(err, nats.ErrAuthorization) {
				return nil, fmt.Errorf("eventbus: the server refused the JWT of NATS_JWT_TOKEN signed with NATS_NKEY_SEED: %w", err)
			}
			return nil, fmt.Errorf("eventbus: %w", err)
		}
		c.nc, c.own = nc, true
	}
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil, fmt.Errorf("eventbus: %w", err)
	}
	c.js = js
	c.payloads, err = objectstore.NewOffloader(c.nc, js, objectstore.OffloadConfig{
		Policy: b.cfg.Queue.LargePayloads,
		Bucket: objectstore.Config{Bucket: b.cfg.Queue.ObjectBucket, Storage: b.cfg.Queue.Storage,
			Replicas: b.cfg.Queue.Replicas, TTL: b.cfg.Queue.EventBusMaxAge},
		Limit: b.cfg.MaxPayload,
	})
	if err != nil {
		return nil, fmt.Errorf("eventbus: %w", err)
	}
	b.conns[key] = c
	return c, nil
}

var (
	// topicRE: subject tokens without wildcards or spaces.
	topicRE = regexp.MustCompile(`^[^.*>\s]+(\.[^.*>\s]+)*$`)
	unsafe  = regexp.MustCompile(`[^A-Za-z0-9_-]`)
)

// checkTopic and checkGroup also refuse what is not UTF-8 text: the
// metrics label a group's series with its topic and group, and a label
// that is not UTF-8 is a panic.
func checkTopic(topic string) error {
	bad := !utf8.ValidString(topic) || strings.ContainsFunc(topic, unicode.IsControl)
	if bad || !topicRE.MatchString(topic) || len(topic) > 200 {
		return fmt.Errorf("eventbus: topic %q: want a NATS subject of dot-separated tokens of UTF-8 text, without wildcards, spaces or control characters, at most 200 bytes", topic)
	}
	return nil
}

func checkGroup(group string) error {
	bad := !utf8.ValidString(group) || strings.ContainsAny(group, ".*>") || strings.ContainsFunc(group, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	})
	if group == "" || len(group) > 200 || bad {
		return fmt.Errorf("eventbus: group %q: want a non-empty name of UTF-8 text, at most 200 bytes, without spaces, control characters, dots or wildcards", group)
	}
	return nil
}

// StreamName returns the JetStream stream that holds topic's messages:
// the topic with every character other than letters, digits, '-' and '_'
// replaced by '_', then "_STREAM". For a topic of letters, digits, '.',
// '-' and '_' (all of Coze Studio's) that is the name Coze Studio gives
// it; Coze replaces only the dots, so for a topic with other characters
// the two name different streams, and the second one created is refused
// for taking the topic the first already takes. Topics that differ only
// in replaced characters ("a.b", "a_b", "a:b") name one stream: it holds
// the first one used, and the others are refused.
func StreamName(topic string) string { return unsafe.ReplaceAllString(topic, "_") + "_STREAM" }

// DeadLetterStream returns the stream that holds topic's dead letters.
func DeadLetterStream(topic string) string { return unsafe.ReplaceAllString(topic, "_") + "_DLQ" }

// deadLetterSubject is where group's dead letters of topic go.
func deadLetterSubject(topic, group string) string {
	return "loom.dlq.events." + unsafe.ReplaceAllString(topic, "_") + "." + unsafe.ReplaceAllString(group, "_")
}

// ensureStreams makes sure topic's stream (and dead-letter stream) exist,
// once per connection.
func (b *Bus) ensureStreams(ctx context.Context, c *conn, topic string, deadLetters bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := topic
	if deadLetters {
		key += "\x00dlq"
	}
	if c.streams[key] {
		return nil
	}
	q := b.cfg.Queue
	storage, err := objectstore.StorageType(q.Storage)
	if err != nil {
		return fmt.Errorf("eventbus: %w", err)
	}
	if deadLetters {
		name := DeadLetterStream(topic)
		_, _, err = jsstream.Ensure(ctx, c.js, jetstream.StreamConfig{
			Name:        name,
			Description: "Loom EventBus dead letters of topic " + topic,
			Subjects:    []string{"loom.dlq.events." + unsafe.ReplaceAllString(topic, "_") + ".*"},
			MaxAge:      q.DeadLetterMaxAge,
			Storage:     storage,
			Replicas:    q.Replicas,
			Metadata:    map[string]string{"loom.kind": "eventbus_dead_letter", "loom.topic": topic},
		}, b.log)
		if err != nil {
			return fmt.Errorf("eventbus: create stream %s: %w", name, hint(err))
		}
	} else {
		name := StreamName(topic)
		// Topics that differ only in what StreamName replaces share the
		// name. Taking such a stream as this topic's would rewrite its
		// labels, and the group's consumer of the same name on it to
		// filter this topic, which the stream never holds: the other
		// topic's group would silently lose its messages, and sends here
		// would find no stream.
		if s, err := c.js.Stream(ctx, name); err == nil {
			if have := s.CachedInfo().Config.Subjects; !jsstream.Covers(have, topic) {
				return fmt.Errorf("eventbus: stream %s, the name of topic %s's stream, exists with subjects %v, which do not take topic %s: another topic that differs from it only in characters other than letters, digits, '-' and '_' has it (stream names replace those by '_'); use another topic, whose stream name is its own",
					name, topic, have, topic)
			}
		}
		_, _, err = jsstream.Ensure(ctx, c.js, jetstream.StreamConfig{
			Name:        name,
			Description: "Loom EventBus topic " + topic,
			Subjects:    []string{topic},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      q.EventBusMaxAge,
			MaxMsgs:     int64(q.MaxMsgs),
			MaxBytes:    int64(q.MaxBytes),
			Storage:     storage,
			Replicas:    q.Replicas,
			Metadata:    map[string]string{"loom.kind": "eventbus", "loom.topic": topic},
		}, b.log)
		if err != nil {
			return fmt.Errorf("eventbus: create stream %s for topic %s: %w", name, topic, b.overlap(ctx, c, topic, name, hint(err)))
		}
	}
	c.streams[key] = true
	return nil
}

// errCodeSubjectOverlap is the server's answer to a stream whose subjects
// another stream takes already.
const errCodeSubjectOverlap jetstream.ErrorCode = 10065

// overlap names the stream that takes topic already, when err says one
// does, and what to do: the server's answer names neither.
func (b *Bus) overlap(ctx context.Context, c *conn, topic, name string, err error) error {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeSubjectOverlap {
		return err
	}
	other, lerr := c.js.StreamNameBySubject(ctx, topic)
	if lerr != nil || other == "" {
		return err
	}
	why := ""
	if other == strings.ReplaceAll(topic, ".", "_")+"_STREAM" {
		why = " (Coze Studio's name for it: Coze replaces only dots, Loom every character but letters, digits, '-' and '_')"
	}
	return fmt.Errorf("stream %s already takes topic %s, whose messages Loom keeps in %s%s; remove the topic from that stream (nats stream edit %s), delete that stream if nothing needs it, or use another topic: %w",
		other, topic, name, why, other, err)
}

// forget drops what is known of topic's streams, so that the next
// ensureStreams looks at the server again.
func (c *conn) forget(topic string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.streams, topic)
	delete(c.streams, topic+"\x00dlq")
}

// hint says what to do about an error of a JetStream call. A server
// without JetStream does not answer its API at all: nats.go reports no
// responders, which names neither JetStream nor the remedy.
func hint(err error) error {
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("%w (start nats-server with -js, or set NATS_USE_JETSTREAM=false)", err)
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("%w: nothing answers the JetStream API; JetStream is not enabled on the server or for this account (start nats-server with -js, or set NATS_USE_JETSTREAM=false)", err)
	}
	return err
}

// Shutdown drains the bus: every consumer stops taking messages, hands
// back those not started, and lets its running handlers finish and settle;
// then sends stop (those of the handlers included, which may send until
// they return): those under way complete, and later ones fail with
// ErrClosed; then the connections the bus opened are closed. If ctx ends
// first, running handlers' contexts are cancelled, Shutdown waits at most
// workqueue.ShutdownGrace for them to return and returns ctx's error; it
// reports handlers still running then (they ignore their context), without
// waiting for them, in an error wrapping ctx's: a JetStream consumer's is a
// *workqueue.AbandonedError. Later calls return nil.
func (b *Bus) Shutdown(ctx context.Context) error { return b.shutdown(ctx, false) }

// Close stops the bus now: every consumer stops taking messages and its
// running handlers' contexts are cancelled at once; messages not settled
// are handed back (JetStream) or dropped (Core NATS, which keeps none).
// Close waits at most workqueue.ShutdownGrace for the handlers to return,
// reporting those that ignore their context (a JetStream consumer in a
// *workqueue.AbandonedError); then sends fail with ErrClosed, those under
// way are not waited for, and the connections the bus opened are closed.
// Later calls of Shutdown or Close return nil.
func (b *Bus) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return b.shutdown(ctx, true)
}

// shutdown stops the consumers, bounded by ctx; now says ctx is already
// cancelled on purpose, so its error is not reported.
func (b *Bus) shutdown(ctx context.Context, now bool) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	consumers := b.consumers
	conns := b.conns
	b.mu.Unlock()
	defer close(b.done)
	var wg sync.WaitGroup
	errs := make([]error, len(consumers))
	for i, c := range consumers {
		wg.Go(func() {
			errs[i] = c.shutdown(ctx)
			if now && errs[i] == context.Canceled {
				errs[i] = nil
			}
		})
	}
	wg.Wait()
	// Producers stop only now: a handler that Shutdown let finish may
	// send as it does. Sends return once the server has them: once those
	// under way have, nothing is pending. Close does not wait.
	b.mu.Lock()
	b.noSends = true
	var sent chan struct{}
	if b.sending > 0 {
		sent = make(chan struct{})
		b.sent = sent
	}
	b.mu.Unlock()
	if sent != nil {
		select {
		case <-sent:
		case <-ctx.Done():
		}
	}
	for _, c := range conns {
		c.mu.Lock()
		if c.pubJS != nil {
			c.pubJS.CleanupPublisher()
		}
		c.mu.Unlock()
		if c.own {
			c.nc.Close()
		}
	}
	return errors.Join(errs...)
}

// beginSend counts a send under way, unless the bus has stopped sending;
// endSend ends it.
func (b *Bus) beginSend() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.noSends {
		return false
	}
	b.sending++
	return true
}

func (b *Bus) endSend() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sending--
	if b.sending == 0 && b.sent != nil {
		close(b.sent)
		b.sent = nil
	}
}

// addConsumer records a running consumer, unless the bus is shut down.
func (b *Bus) addConsumer(s stopper) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	b.consumers = append(b.consumers, s)
	return nil
}

var _ ConsumerService = (*Bus)(nil)
