package workqueue

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/internal/jsconsume"
	"github.com/loomrt/loom/metrics"
)

// DefaultGroup is the durable consumer every worker of a queue shares when
// Config.Group is empty; the seed's NATSQueue calls it "worker-group".
const DefaultGroup = "worker-group"

// DefaultDuplicateWindow is how long the server remembers message ids to
// drop a repeated enqueue.
const DefaultDuplicateWindow = 2 * time.Minute

// DefaultMaxAckPending bounds the jobs delivered and not yet settled,
// across every worker of a queue (and of an EventBus consumer group).
const DefaultMaxAckPending = jsconsume.DefaultMaxAckPending

// Config describes a queue. Start from DefaultConfig or ConfigFrom; the
// fields left zero take the defaults of the queue.* configuration keys.
type Config struct {
	// Name is the stream's name: letters, digits, '-' and '_'. Required.
	Name string
	// Subject jobs are published to; default Name + ".queue", as the
	// seed's NATSQueue publishes. Dot-separated tokens of UTF-8 text,
	// without spaces, control characters or wildcards.
	Subject string
	// Group is the durable consumer that workers share; default
	// DefaultGroup.
	Group string

	// Queue holds the settings of the queue.* keys: storage, replicas,
	// limits, codec, ack wait, attempts, backoff, concurrency, enqueue
	// back-pressure and timeout, large payloads, dead-letter retention.
	config.Queue

	// Codec, if set, replaces the codec Queue.Codec names. A queue of
	// []byte carries the bytes as they are whatever the codec.
	Codec codec.Codec
	// BackoffJitter removes a random fraction of each retry delay, up to
	// this much (0 to 1); 0 keeps the delays exact.
	BackoffJitter float64
	// MaxAckPending bounds jobs delivered and not yet settled across all
	// workers; 0 is DefaultMaxAckPending.
	MaxAckPending int
	// DuplicateWindow: see DefaultDuplicateWindow; 0 means that. A
	// stream with a shorter max age (MaxAge, DeadLetterMaxAge) gets a
	// window of its max age, the longest the server takes.
	DuplicateWindow time.Duration
	// AutoID gives every job enqueued without an idempotency key a unique
	// message id, so that a send retried after a lost acknowledgement (a
	// reconnect, a leader election) is stored once. It costs throughput:
	// the server tracks every id for DuplicateWindow and every message
	// carries a header (30% fewer enqueues and 25% fewer deliveries per
	// second in BenchmarkQueue, see docs/performance.md). Without it such a retry may
	// store a job twice; consumers see it as a duplicate, as they see a
	// job redelivered after a crash.
	AutoID bool
	// MaxPayload, if positive, is the largest message sent as is, instead
	// of the server's max_payload (for tests of large payloads).
	MaxPayload int64

	// Logger receives the queue's logs; nil is slog.Default().
	Logger *slog.Logger
	// Metrics receives the queue's metrics; nil records them nowhere.
	Metrics *metrics.Metrics
}

// DefaultConfig returns the configuration of queue name with the built-in
// defaults of the queue.* keys.
func DefaultConfig(name string) Config {
	return Config{Name: name, Queue: config.Default().Queue}
}

// ConfigFrom returns the configuration of queue name with the queue.* keys
// of c, as loaded by config.Load (rt.Config().Queue in a Loom program).
func ConfigFrom(c config.Queue, name string) Config {
	return Config{Name: name, Queue: c}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,200}$`)

// resolved is a Config with its defaults filled in and checked.
func (c Config) resolved() (Config, error) {
	if !nameRE.MatchString(c.Name) {
		return c, fmt.Errorf("workqueue: queue name %q: use 1 to 200 letters, digits, '-' and '_' (a JetStream stream name)", c.Name)
	}
	if c.Subject == "" {
		c.Subject = c.Name + ".queue"
	}
	if err := checkSubject(c.Subject); err != nil {
		return c, fmt.Errorf("workqueue: subject %q of queue %s: %w", c.Subject, c.Name, err)
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if !nameRE.MatchString(c.Group) {
		return c, fmt.Errorf("workqueue: group %q of queue %s: use letters, digits, '-' and '_'", c.Group, c.Name)
	}
	if !(c.BackoffJitter >= 0 && c.BackoffJitter <= 1) {
		return c, fmt.Errorf("workqueue: queue %s: BackoffJitter %v: use a fraction from 0 to 1 of each retry delay (0 keeps the delays exact)", c.Name, c.BackoffJitter)
	}
	c.Queue = c.Queue.WithDefaults()
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
	if c.DuplicateWindow <= 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.Codec == nil {
		cd, err := codec.ByName(c.Queue.Codec)
		if err != nil {
			return c, fmt.Errorf("workqueue: queue %s: %w", c.Name, err)
		}
		c.Codec = cd
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	full := config.Default()
	full.Queue = c.Queue
	if err := full.Validate(); err != nil {
		return c, fmt.Errorf("workqueue: queue %s: %w", c.Name, err)
	}
	return c, nil
}

// checkSubject says what is wrong with subject as the one jobs are
// published to, if anything. A subject that is not UTF-8 text is refused:
// the server keeps a stream's subjects as JSON, which turns invalid bytes
// into U+FFFD, so the stream would take a subject other than the queue's.
func checkSubject(subject string) error {
	if !utf8.ValidString(subject) || strings.ContainsFunc(subject, unicode.IsControl) {
		return errors.New("use UTF-8 text without control characters")
	}
	if strings.ContainsAny(subject, " \t\r\n") {
		return errors.New("use dot-separated tokens without spaces")
	}
	for _, tok := range strings.Split(subject, ".") {
		switch tok {
		case "":
			return errors.New("use dot-separated tokens, none of them empty")
		case "*", ">":
			return errors.New("jobs are published to it, so it takes no wildcards (* or >)")
		}
	}
	return nil
}

// deadLetterStream and deadLetterSubject name where a queue's dead
// letters go.
func deadLetterStream(queue string) string  { return queue + "_dlq" }
func deadLetterSubject(queue string) string { return "loom.dlq." + queue }
