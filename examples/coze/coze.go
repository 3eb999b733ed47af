// Package coze adapts Loom's EventBus to Coze Studio's eventbus contract
// (backend/infra/eventbus): the same method set, option shapes
// and message type, so a Coze Studio deployment switches its producers and
// consumers to Loom by changing one constructor.
//
// The declarations below the adapter mirror Coze Studio's contract types
// one for one. Copied into Coze Studio, the adapter drops them and imports
// the contract package instead; nothing else changes.
//
// On the wire Loom's bus and Coze Studio's own NATS eventbus exchange
// messages both ways, on Core NATS and JetStream: the topic is the
// subject, the body the data, the sharding key the Sharding-Key header,
// and a JetStream topic's stream is <topic>_STREAM (one Coze created is
// used as it is). Coze's JetStream producer writes no Sharding-Key, only
// a message id "<key>-<index>", so its messages reach Loom without a key;
// Coze's consumers read no key.
package coze

import (
	"context"
	"fmt"

	"github.com/loomrt/loom/eventbus"
)

// NewProducer returns a Producer of topic on bus: Coze Studio's
// NewProducer(nameServer, topic, group, retries) with the bus first.
func NewProducer(bus *eventbus.Bus, nameServer, topic, group string, retries int) (Producer, error) {
	p, err := bus.NewProducer(nameServer, topic, group, retries)
	if err != nil {
		return nil, err
	}
	return producer{p}, nil
}

// NewConsumerService returns a ConsumerService that registers consumers on
// bus.
func NewConsumerService(bus *eventbus.Bus) ConsumerService { return consumerService{bus} }

type producer struct{ p eventbus.Producer }

func (p producer) Send(ctx context.Context, body []byte, opts ...SendOpt) error {
	return p.p.Send(ctx, body, sendOpts(opts)...)
}

func (p producer) BatchSend(ctx context.Context, bodyArr [][]byte, opts ...SendOpt) error {
	return p.p.BatchSend(ctx, bodyArr, sendOpts(opts)...)
}

func sendOpts(opts []SendOpt) []eventbus.SendOpt {
	var o SendOption
	for _, opt := range opts {
		opt(&o)
	}
	if o.ShardingKey == nil {
		return nil
	}
	return []eventbus.SendOpt{eventbus.WithShardingKey(*o.ShardingKey)}
}

type consumerService struct{ bus *eventbus.Bus }

func (s consumerService) RegisterConsumer(nameServer, topic, group string, h ConsumerHandler, opts ...ConsumerOpt) error {
	if h == nil {
		// The bus sees the adapter's wrapper, never nil: check here.
		return fmt.Errorf("coze: consumer of topic %s, group %s: the consumer handler is nil; RegisterConsumer needs one", topic, group)
	}
	var o ConsumerOption
	for _, opt := range opts {
		opt(&o)
	}
	var lopts []eventbus.ConsumerOpt
	if o.Orderly != nil {
		lopts = append(lopts, eventbus.WithConsumerOrderly(*o.Orderly))
	}
	return s.bus.RegisterConsumer(nameServer, topic, group, eventbus.HandlerFunc(func(ctx context.Context, m *eventbus.Message) error {
		return h.HandleMessage(ctx, &Message{Topic: m.Topic, Group: m.Group, Body: m.Body})
	}), lopts...)
}

// Coze Studio's contract, mirrored.

// Producer sends messages to one topic.
type Producer interface {
	Send(ctx context.Context, body []byte, opts ...SendOpt) error
	BatchSend(ctx context.Context, bodyArr [][]byte, opts ...SendOpt) error
}

// ConsumerService registers consumers.
type ConsumerService interface {
	RegisterConsumer(nameServer, topic, group string, consumerHandler ConsumerHandler, opts ...ConsumerOpt) error
}

// ConsumerHandler handles a consumer group's messages.
type ConsumerHandler interface {
	HandleMessage(ctx context.Context, msg *Message) error
}

// Message is one message as a consumer receives it.
type Message struct {
	Topic string
	Group string
	Body  []byte
}

// SendOpt tunes a send.
type SendOpt func(option *SendOption)

// SendOption holds a send's options.
type SendOption struct {
	ShardingKey *string
}

// WithShardingKey sets the messages' sharding key.
func WithShardingKey(key string) SendOpt {
	return func(o *SendOption) { o.ShardingKey = &key }
}

// ConsumerOpt tunes a consumer.
type ConsumerOpt func(option *ConsumerOption)

// ConsumerOption holds a consumer's options.
type ConsumerOption struct {
	Orderly *bool
}

// WithConsumerOrderly sets whether messages of one sharding key are
// handled one at a time, in order.
func WithConsumerOrderly(orderly bool) ConsumerOpt {
	return func(o *ConsumerOption) { o.Orderly = &orderly }
}
