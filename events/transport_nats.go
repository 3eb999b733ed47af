package events

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/internal/natsrefusal"
	"github.com/loomrt/loom/metrics"
)

// Core NATS: the subject is the NATS subject, the envelope the message
// body (NATS delimits messages, so no frame). A subscription's callback
// runs on the NATS client's goroutine for it, decodes the envelope, tracks
// the sequence and buffers the event; nothing blocks there unless the
// overflow policy is Block.

type natsSender struct {
	nc      *nats.Conn
	subject string

	// seen is the connection's last error when the publisher last
	// looked: a refusal is reported once, and one from before the
	// publisher not at all (the connection's last error stays until
	// another replaces it).
	mu   sync.Mutex
	seen error
}

func newNATSSender(ctx context.Context, rt *loom.Runtime, subject string) (*natsSender, error) {
	nc, err := rt.NATS(ctx)
	if err != nil {
		return nil, fmt.Errorf("events: the nats transport needs NATS (nats.url, NATS_SERVER): %w", err)
	}
	return &natsSender{nc: nc, subject: subject, seen: nc.LastError()}, nil
}

func (s *natsSender) send(ctx context.Context, subject string, env []byte) error {
	if trace.SpanContextFromContext(ctx).IsValid() {
		return s.nc.PublishMsg(traceMsg(ctx, subject, env))
	}
	return s.nc.Publish(subject, env)
}

func (s *natsSender) subscribers(string) (int, error) { return 0, errNoSubscriberCount }

func (s *natsSender) flush(ctx context.Context) error {
	if s.nc.IsClosed() {
		return fmt.Errorf("%w: the NATS connection is closed", ErrConnectionClosed)
	}
	if err := flush(ctx, s.nc); err != nil {
		return err
	}
	return s.refused()
}

func (s *natsSender) shutdown(ctx context.Context, drain bool) error {
	if !drain || s.nc.IsClosed() {
		return nil
	}
	if err := flush(ctx, s.nc); err != nil {
		return err
	}
	return s.refused()
}

// refused returns an error if the server refused publishes to the
// subject since the publisher last looked. Core NATS publishes are not
// answered: the server drops a refused one and says so only in an
// asynchronous error on the connection, which a flush's answer follows.
// Publish does not look (that would cost every event a flush); Flush and
// Shutdown do.
func (s *natsSender) refused() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	last := s.nc.LastError()
	err := refusal(last, s.seen, metrics.PermissionPublish, s.subject)
	s.seen = last
	if err == nil {
		return nil
	}
	return fmt.Errorf("the NATS server refused events published on %s (%w): this process's NATS user needs publish permission on %s",
		s.subject, err, s.subject)
}

// refusal returns last, a connection's last error, if it is the NATS
// server's refusal of the connection's op (metrics.PermissionPublish or
// PermissionSubscribe) on subject and not before, the last error earlier
// (a refusal the caller has seen already, or one from before the
// caller's time): the server reports a refusal to the connection and to
// nothing else.
func refusal(last, before error, op, subject string) error {
	if last == before {
		return nil
	}
	if kind, refused, ok := natsrefusal.Read(last); !ok || kind != op || refused != subject {
		return nil
	}
	return last
}

// flush waits for the server to have what nc sent, bounded by ctx or, if
// ctx has no deadline, by 10s.
func flush(ctx context.Context, nc *nats.Conn) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	return nc.FlushWithContext(ctx)
}

// natsPendingMsgs bounds the NATS client's own buffer in front of a
// subscription's: it only fills when the overflow policy is Block (or the
// callback cannot keep up with decoding). What the client drops there is
// counted as dropped as soon as it happens (see natsSource.dropped).
const (
	natsPendingMsgs  = 65536
	natsPendingBytes = 64 << 20
)

type natsSource struct {
	c       *subCore
	sub     atomic.Pointer[nats.Subscription]
	closed  <-chan nats.SubStatus
	watcher chan struct{} // closed when the status watcher returns
	ended   atomic.Bool   // the watcher saw the subscription end

	// seenDropped is the client's drop count last read, kept because the
	// client forgets it once the subscription ends.
	seenDropped atomic.Uint64
}

func subscribeNATS(ctx context.Context, rt *loom.Runtime, c *subCore, o options) (*natsSource, error) {
	nc, err := rt.NATS(ctx)
	if err != nil {
		return nil, fmt.Errorf("events: the nats transport needs NATS (nats.url, NATS_SERVER): %w", err)
	}
	s := &natsSource{c: c, watcher: make(chan struct{})}
	c.client = s
	before := nc.LastError()
	sub, err := nc.Subscribe(c.pattern, func(m *nats.Msg) { c.receive(m.Subject, m.Header, m.Data) })
	if err != nil {
		return nil, fmt.Errorf("events: subscribe to %s: %w", c.pattern, err)
	}
	s.sub.Store(sub)
	_ = sub.SetPendingLimits(max(natsPendingMsgs, o.bufferSize), natsPendingBytes)
	if err := flush(ctx, nc); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("events: subscribe to %s: NATS server did not confirm: %w", c.pattern, err)
	}
	// A refused subscription is reported to the connection, before the
	// flush's answer, and stays in place receiving nothing.
	if err := refusal(nc.LastError(), before, metrics.PermissionSubscribe, c.pattern); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("events: subscribe to %s: the NATS server refused the subscription (%w): this process's NATS user needs subscribe permission on %s",
			c.pattern, err, c.pattern)
	}
	s.closed = sub.StatusChanged(nats.SubscriptionClosed)
	return s, nil
}

// dropped returns how many messages the NATS client dropped because its
// buffer for this subscription was full (its slow-consumer path). Those
// messages never reach the callback, so this is the only place they show
// before a later event reveals the gap they left.
func (s *natsSource) dropped() uint64 {
	if sub := s.sub.Load(); sub != nil {
		if n, err := sub.Dropped(); err == nil {
			for {
				seen := s.seenDropped.Load()
				if uint64(n) <= seen || s.seenDropped.CompareAndSwap(seen, uint64(n)) {
					break
				}
			}
		}
	}
	return s.seenDropped.Load()
}

// pending returns the messages waiting in the NATS client's buffer. The
// client counts the message its callback handles as pending until it
// takes the next: that one is in the ring already, or held by a push
// waiting for room (which the ring counts), or being decoded; so one is
// left out, and the count may miss an event for a moment but never counts
// one twice.
func (s *natsSource) pending() int {
	sub := s.sub.Load()
	if sub == nil {
		return 0
	}
	n, _, err := sub.Pending()
	if err != nil {
		return 0
	}
	return max(n-1, 0)
}

// start watches the subscription: one the client closes (the connection
// gave up) ends the stream with an error instead of leaving the reader
// waiting. It runs once the subscription is set up.
func (s *natsSource) start() {
	go func() {
		defer close(s.watcher)
		select {
		case <-s.closed:
			s.ended.Store(true)
			s.c.close(fmt.Errorf("%w: NATS subscription to %s ended (connection closed)", ErrConnectionClosed, s.c.pattern))
		case <-s.c.done:
		}
	}()
}

func (s *natsSource) close() error {
	s.dropped() // the client forgets it after Unsubscribe
	err := s.sub.Load().Unsubscribe()
	if err == nats.ErrConnectionClosed || err == nats.ErrBadSubscription {
		err = nil
	}
	if !s.ended.Load() {
		<-s.watcher
	}
	return err
}
