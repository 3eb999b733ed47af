// Package jsconsume is the consuming engine shared by work queues and the
// JetStream EventBus: it pulls from a durable JetStream consumer, runs a
// handler with a concurrency limit, acknowledges after success, naks with
// exponential backoff after a failure, reports progress while a handler
// runs, and after MaxDeliver attempts copies the message to a dead-letter
// stream with its last error and terminates it.
//
// Redelivery is bounded by Loom, not by the server: the consumer is created
// with an unlimited MaxDeliver, so that a job whose last attempt timed out
// (a hung handler, a killed consumer) comes back once more and is
// dead-lettered then, instead of staying in the stream unseen forever.
package jsconsume
