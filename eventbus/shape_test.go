package eventbus_test

import (
	"context"

	"github.com/loomrt/loom/eventbus"
)

// The shapes docs/queues.md says Loom's own types share with Coze Studio's
// eventbus contract (backend/infra/eventbus), declared as Coze declares
// them with Loom's types in Coze's places: a change that breaks one fails
// the build of the tests. (Message has more fields than Coze's, and
// ConsumerOption an Orderly bool where Coze's has a *bool: examples/coze
// has those exactly.)
var (
	_ interface {
		Send(ctx context.Context, body []byte, opts ...eventbus.SendOpt) error
		BatchSend(ctx context.Context, bodyArr [][]byte, opts ...eventbus.SendOpt) error
	} = eventbus.Producer(nil)
	_ interface {
		RegisterConsumer(nameServer, topic, group string, consumerHandler eventbus.ConsumerHandler, opts ...eventbus.ConsumerOpt) error
	} = (*eventbus.Bus)(nil)
	_ interface {
		HandleMessage(ctx context.Context, msg *eventbus.Message) error
	} = eventbus.ConsumerHandler(nil)
	_ func(*eventbus.Bus, string, string, string, int) (eventbus.Producer, error) = (*eventbus.Bus).NewProducer
	_ func(option *eventbus.SendOption)                                           = eventbus.SendOpt(nil)
	_                                                                             = eventbus.SendOption{ShardingKey: (*string)(nil)}
	_ func(key string) eventbus.SendOpt                                           = eventbus.WithShardingKey
	_ func(option *eventbus.ConsumerOption)                                       = eventbus.ConsumerOpt(nil)
	_ func(orderly bool) eventbus.ConsumerOpt                                     = eventbus.WithConsumerOrderly
	_                                                                             = eventbus.Message{Topic: "", Group: "", Body: []byte(nil)}
)
