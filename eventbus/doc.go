// Package eventbus is Coze Studio's EventBus API (a Producer with Send and
// BatchSend, a ConsumerService with RegisterConsumer(nameServer, topic,
// group, handler)) on NATS, with what Coze Studio's NATS implementation
// lacks:
//
//   - retries that back off: a failed message is retried after an
//     exponential delay, not at once and forever;
//   - a limit on attempts, after which the message goes to a dead-letter
//     stream with its last error and delivery count;
//   - a sharding key that never makes distinct messages duplicates: it
//     travels in the ShardingKeyHeader header, and WithOrderly handles the
//     messages of one key one at a time, in order (on JetStream a retried
//     message comes after the key's later ones); it is never a message
//     id (Coze Studio's JetStream producer gives a batch's messages the
//     ids <key>-0, <key>-1, ..., so every later batch with the key
//     repeats them, and the server drops those within its duplicate
//     window);
//   - a shutdown that drains: Shutdown stops taking messages, lets the
//     handlers running finish and acknowledges them, and hands the rest
//     back, instead of closing the connection under them;
//   - payloads above the server's max_payload, sent through the object
//     store by reference or refused with the size and the limit.
//
// Consumers run on Core NATS queue groups (the default: no persistence, a
// message that arrives while no member of a group runs is lost to that
// group) or, with JetStream (NATS_USE_JETSTREAM=true, queue.eventbus_jetstream),
// on a durable consumer per group of a stream per topic, so every group
// gets every message, at least once.
//
// # The handle and how to get one
//
// A [Bus] is a factory of producers and a consumer service, as Coze
// Studio's API wants, and it owns what they share: connections (one per
// name server), streams made sure of, and the consumers it must drain.
// Producers and consumers have no handle of their own to close: the bus
// stops them all, by net/http's rule ([Bus.Shutdown] drains, [Bus.Close]
// stops now).
//
// A Loom program opens the bus from its Runtime in one call,
//
//	bus, err := eventbus.Open(ctx, rt, eventbus.Config{})
//
// on the runtime's NATS connection (the name server ""), with its queue.*
// settings for what the Config leaves zero, its logger and metrics; the
// runtime's shutdown shuts the bus down. A Coze Studio deployment, which
// has no Runtime, uses [New]: the bus opens its own connections, because
// Coze's RegisterConsumer and NewProducer may name other NATS servers, and
// follows Coze's environment variables (seed 002) through ConfigFromEnv:
// NATS_SERVER_URL (one URL or several comma-separated, nats:// or tls://),
// NATS_JWT_TOKEN with NATS_NKEY_SEED, NATS_USERNAME and NATS_PASSWORD,
// NATS_TOKEN, NATS_STREAM_REPLICAS and NATS_USE_JETSTREAM. [NewWithConn]
// serves the name server "" on a connection the caller owns.
package eventbus
