// Package events is Loom's event plane: typed publish / subscribe of facts
// that components broadcast to whoever listens (Dynamo's kv_events and
// load_metrics), with no silent loss.
//
// A Publisher publishes events of one Go type on one topic of one Scope
// (a namespace, a component or an endpoint). A Subscription receives the
// events whose scope and topic match its pattern (wildcards allowed) and is
// read by ranging over Events:
//
//	pub, err := events.NewPublisher[KvEvent](ctx, rt, events.Scope{Namespace: "dynamo", Component: "worker"}, "kv_events")
//	...
//	err = pub.Publish(ctx, KvEvent{...})
//
//	sub, err := events.Subscribe[KvEvent](ctx, rt, events.Scope{Namespace: "dynamo", Component: events.Any}, "kv_events")
//	for ev, err := range sub.Events() { ... ev.Value, ev.InstanceID, ev.Sequence ... }
//
// # Subjects
//
// Events travel on subjects namespace.{ns}[.component.{c}[.endpoint.{e}]].{topic},
// as in Dynamo, with the dots of nested namespaces encoded as %2E so that a
// namespace is always one subject token.
//
// # Envelope and loss accounting
//
// Each event travels in an Envelope: publisher id, sequence number (per
// publisher, from 0), publish time, topic, payload; in MessagePack (the
// default) or JSON. Every subscription follows each publisher's sequence
// and counts gaps (lost), late arrivals (reordered) and duplicates, plus the
// events its own bounded buffer dropped for a slow reader; see Stats, the
// loom_events_* metrics, and WithLossErrors to see losses in the stream.
// A publisher that restarts has a new id, so it is not reported as loss.
//
// A subscriber that keeps state built from the events (a router's index of
// the workers' KV caches) reacts to a gap with OnGap: its callback gets the
// publisher, its instance id, the sequence expected and the one that
// arrived, as soon as the event after the gap arrives, so the subscriber
// can mark that publisher's state stale and fetch a snapshot:
//
//	sub, err := events.Subscribe[KvEvent](ctx, rt, scope, "kv_events",
//		events.OnGap(func(g events.Gap) { resync <- g.InstanceID }))
//
// The callback runs on the subscription's receiving goroutine: it must
// return quickly (send to a buffered channel, as above, or set a flag).
//
// # Transports
//
// events.transport chooses how events travel: core NATS (the default), ZeroMQ
// (direct to each publisher found in discovery, or through a Broker), or
// JetStream (durable: kept in a stream, replayable from a sequence or a
// time, acknowledged, with back-pressure instead of drops). docs/events.md
// describes the wire format and the choices.
package events
