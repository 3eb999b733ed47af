// Package loom is a distributed runtime for Go services, in the design of
// NVIDIA Dynamo's runtime, on NATS / JetStream and etcd.
//
// A program built on Loom is a set of components that find each other
// through discovery, call each other over a streaming request plane with
// load-aware routing, broadcast events and hand durable jobs to each other.
//
// The pieces:
//
//   - A [Runtime] is one process's connection to the system. [Run] makes
//     one and runs the program's main function with graceful shutdown on
//     SIGINT / SIGTERM; [NewRuntime] makes one for programs and tests that
//     manage their own lifecycle.
//   - [Namespace], [Component] and [Endpoint] name a served function:
//     ns/component/endpoint. Names match ^[a-z0-9_-]+$; namespaces may nest
//     with ".".
//   - An [Engine] turns one request into a stream of responses. [Serve]
//     serves an endpoint with an engine; [NewClient] returns a [Client] that
//     watches discovery for the endpoint's instances and routes each request
//     with a [Picker]. A Client is itself an Engine, so engines compose into
//     pipelines that may cross processes at any link.
//   - A request's context is a child of its endpoint's, which is a child of
//     its component's, which is a child of the runtime's. Cancelling the
//     caller's context kills the request (the handler's context is
//     cancelled); [WithStop] lets a caller ask it to finish gracefully
//     ([Stopped] in the handler). Both reach the requests the handler makes
//     in turn.
//   - A caller ranging over a call's responses can ask a [Lookahead]
//     whether the next one has already arrived, and so write out a burst
//     of responses once instead of once each.
//
// Calls to an instance in the same process take a local fast path: the
// handler runs in the caller's goroutine with no serialization, with the
// same semantics as a remote call.
package loom
