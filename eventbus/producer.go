package eventbus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/loomrt/loom/internal/natsrefusal"
	"github.com/loomrt/loom/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// producer sends to one topic.
type producer struct {
	b       *Bus
	c       *conn
	topic   string
	group   string
	retries int
}

// NewProducer returns a Producer of topic on nameServer ("" for the bus's
// servers), in the shape of Coze Studio's eventbus.NewProducer. group is
// kept for that shape and names the producer in logs. On JetStream a send
// that fails for a transient reason (a reconnect, a leader election) is
// retried up to retries times (negative: until the context's deadline), with
// the same message id, so a message is stored once.
func (b *Bus) NewProducer(nameServer, topic, group string, retries int) (Producer, error) {
	if err := checkTopic(topic); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.connectTimeout())
	defer cancel()
	c, err := b.conn(ctx, nameServer)
	if err != nil {
		return nil, err
	}
	if b.cfg.Queue.EventBusJetStream {
		if err := b.ensureStreams(ctx, c, topic, false); err != nil {
			return nil, err
		}
	}
	return &producer{b: b, c: c, topic: topic, group: group, retries: retries}, nil
}

func (b *Bus) connectTimeout() time.Duration {
	if t := b.cfg.NATS.ConnectTimeout; t > 0 {
		return t + time.Second
	}
	return 6 * time.Second
}

// Send sends body; see BatchSend.
func (p *producer) Send(ctx context.Context, body []byte, opts ...SendOpt) error {
	return p.BatchSend(ctx, [][]byte{body}, opts...)
}

// BatchSend sends every body to the topic. On Core NATS it returns once
// the server has received them all (a flush); on JetStream once every one
// is stored. A body above the server's max_payload is offloaded to the
// object store or refused, by queue.large_payloads. Without a deadline on
// ctx, queue.enqueue_timeout bounds the call.
func (p *producer) BatchSend(ctx context.Context, bodyArr [][]byte, opts ...SendOpt) error {
	if len(bodyArr) == 0 {
		return fmt.Errorf("eventbus: no messages to send to topic %s", p.topic)
	}
	if !p.b.beginSend() {
		return fmt.Errorf("eventbus: %d messages to topic %s not sent: %w", len(bodyArr), p.topic, ErrClosed)
	}
	defer p.b.endSend()
	var o SendOption
	for _, opt := range opts {
		opt(&o)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.b.cfg.Queue.EnqueueTimeout)
		defer cancel()
	}
	js := p.b.cfg.Queue.EventBusJetStream
	msgs := make([]*nats.Msg, len(bodyArr))
	for i, body := range bodyArr {
		m := &nats.Msg{Subject: p.topic, Data: body}
		if o.ShardingKey != nil && *o.ShardingKey != "" {
			m.Header = nats.Header{}
			m.Header.Set(ShardingKeyHeader, *o.ShardingKey)
			m.Header.Set(LoomShardingKeyHeader, *o.ShardingKey)
		}
		if _, err := p.c.payloads.Prepare(ctx, m, "events/"+unsafe.ReplaceAllString(p.topic, "_"), "event on topic "+p.topic); err != nil {
			return fmt.Errorf("eventbus: message %d of %d: %w", i, len(bodyArr), err)
		}
		if js {
			// A unique id per message, so that a retried send is stored
			// once; the sharding key is never part of it.
			if m.Header == nil {
				m.Header = nats.Header{}
			}
			m.Header.Set(nats.MsgIdHdr, nuid.Next())
		}
		msgs[i] = m
	}
	end := p.b.startSend(ctx, p.topic, msgs)
	err := p.send(ctx, msgs, js)
	end(err)
	return err
}

func (p *producer) send(ctx context.Context, msgs []*nats.Msg, js bool) error {
	if js {
		return p.sendJetStream(ctx, msgs)
	}
	for i, m := range msgs {
		if err := p.c.nc.PublishMsg(m); err != nil {
			return fmt.Errorf("eventbus: send message %d of %d to topic %s: %w", i, len(msgs), p.topic, err)
		}
	}
	if err := p.c.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("eventbus: %d messages to topic %s not confirmed by the server %s: %w", len(msgs), p.topic, p.c.nc.ConnectedUrlRedacted(), err)
	}
	// A refusal comes before the flush's answer.
	return p.refused(len(msgs))
}

// refused returns an error if the server reported refusing a publish to
// the topic: it drops such a message and says so only in an asynchronous
// error on the connection (on JetStream the send would then wait for an
// acknowledgement that never comes).
func (p *producer) refused(n int) error {
	err := p.c.nc.LastError()
	if kind, subject, ok := natsrefusal.Read(err); !ok || kind != metrics.PermissionPublish || subject != p.topic {
		return nil
	}
	return fmt.Errorf("eventbus: %d messages to topic %s refused by the NATS server (%w): this process's NATS user needs publish permission on %s",
		n, p.topic, err, p.topic)
}

// sendJetStream publishes msgs asynchronously, then waits for every
// acknowledgement, sending again those that failed transiently.
func (p *producer) sendJetStream(ctx context.Context, msgs []*nats.Msg) error {
	js, err := p.c.publisher()
	if err != nil {
		return err
	}
	todo := msgs
	var lastErr error
	for attempt := 0; ; attempt++ {
		futures := make([]jetstream.PubAckFuture, len(todo))
		var retry []*nats.Msg
		for i, m := range todo {
			f, err := js.PublishMsgAsync(m)
			if err != nil {
				if !retryable(err) {
					return fmt.Errorf("eventbus: send to topic %s: %w", p.topic, hint(err))
				}
				lastErr = err
				retry = append(retry, m)
				continue
			}
			futures[i] = f
		}
		for i, f := range futures {
			if f == nil {
				continue
			}
			select {
			case <-f.Ok():
			case err := <-f.Err():
				if !retryable(err) {
					return fmt.Errorf("eventbus: send to topic %s (stream %s): %w", p.topic, StreamName(p.topic), hint(err))
				}
				lastErr = err
				retry = append(retry, todo[i])
			case <-ctx.Done():
				if err := p.refused(len(todo) - i); err != nil {
					return err
				}
				return fmt.Errorf("eventbus: send to topic %s: %d messages unconfirmed: %w", p.topic, len(todo)-i, ctx.Err())
			}
		}
		if len(retry) == 0 {
			return nil
		}
		if err := p.refused(len(retry)); err != nil {
			return err
		}
		if p.retries >= 0 && attempt >= p.retries {
			return fmt.Errorf("eventbus: send to topic %s: %d of %d messages failed after %d retries: %w", p.topic, len(retry), len(msgs), p.retries, lastErr)
		}
		select {
		case <-time.After(min(50*time.Millisecond<<attempt, time.Second)):
		case <-ctx.Done():
			return fmt.Errorf("eventbus: send to topic %s: %d of %d messages failed (last error: %w): %w", p.topic, len(retry), len(msgs), lastErr, ctx.Err())
		}
		if noStream(lastErr) {
			// The server may have lost the stream (a restart with memory
			// storage, an operator's delete): make sure of it again.
			p.c.forget(p.topic)
			if err := p.b.ensureStreams(ctx, p.c, p.topic, false); err != nil {
				lastErr = fmt.Errorf("%w (and %w)", lastErr, err)
			}
		}
		todo = retry
	}
}

// publisher returns the connection's JetStream context for sending, whose
// asynchronous sends time out so that none is awaited forever.
func (c *conn) publisher() (jetstream.JetStream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pubJS != nil {
		return c.pubJS, nil
	}
	js, err := jetstream.New(c.nc, jetstream.WithPublishAsyncTimeout(5*time.Second), jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return nil, fmt.Errorf("eventbus: %w", err)
	}
	c.pubJS = js
	return js, nil
}

// noStream reports whether err says no stream took a send.
func noStream(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// retryable reports whether a send may succeed if repeated.
func retryable(err error) bool {
	switch {
	case errors.Is(err, nats.ErrConnectionClosed):
		return false
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrReconnectBufExceeded),
		errors.Is(err, jetstream.ErrAsyncPublishTimeout), errors.Is(err, jetstream.ErrTooManyStalledMsgs):
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503
}
