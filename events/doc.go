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
//	for ev, err := range sub.Events(ctx) { ... ev.Value, ev.InstanceID, ev.Sequence ... }
//
// # Handles, contexts and stopping
//
// Publishers and subscriptions are made from a *loom.Runtime, and from
// nothing less, because they need more of it than a connection: its
// instance id (stamped on every event, so a subscriber ties events to the
// instances discovery lists), its discovery (ZeroMQ publishers register
// their sockets, subscribers find them), its events.* configuration and
// metrics, and its lifetime (the runtime's shutdown ends them).
//
// A context bounds the call it is passed to: NewPublisher's and
// Subscribe's the setting up, Publish's and Flush's their wait, Events'
// one range over the stream (it ends, without an error, when its context
// does; ranging again continues). A publisher or subscription then lives
// until it is stopped or its runtime shuts down. Stopping follows
// net/http's rule: [Publisher.Shutdown] drains (what was published leaves
// first), [Publisher.Close] and [Subscription.Close] stop now.
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
