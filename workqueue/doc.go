// Package workqueue is a durable, typed work queue on NATS JetStream: the
// seed's NATSQueue / PrefillQueue, with nothing lost.
//
// A [Queue] of T is a JetStream stream with WorkQueue retention, a durable
// pull consumer that its workers share, and a dead-letter stream, made from
// a [Config] (the queue.* configuration keys: storage, replicas, limits,
// ack wait, attempts, backoff, concurrency, large payloads). The streams
// are created when they are absent and used as they are when present: an
// existing stream's limits are never changed, and each setting that differs
// from the Config is named in a warning (docs/queues.md).
//
// # The handle and how to get one
//
// A Loom program opens a queue from its Runtime in one call:
//
//	q, err := workqueue.Open[Job](ctx, rt, workqueue.Config{Name: "prefill_queue"})
//
// [Open] takes the runtime's NATS connection, its queue.* settings for what
// the Config leaves zero, its logger and metrics, and shuts the queue down
// with the runtime. A queue needs nothing else of a Runtime (no discovery,
// no instance): it is a stream on a NATS connection, so [New] opens one on
// any *nats.Conn with a Config given in full (start from [DefaultConfig]
// or [ConfigFrom]), for programs without a Runtime, such as `loom queue`,
// tools and tests. [Admin], which knows no job types, takes a connection
// too.
//
// The queue is a [Queue] of T, typed, because its jobs are: enqueued
// values, delivered [Job]s and dead jobs ([Queue.DeadLetters] returns
// [DeadJob]s) are of T. Each handle
// follows net/http's rule: [Queue.Shutdown] and [Consumer.Shutdown] drain
// (waiting, up to their context, for the enqueues under way or the running
// handlers), [Queue.Close] and [Consumer.Close] stop now. A context passed
// to a call bounds that call only ([Queue.Run]'s bounds the run).
//
// Enqueue with [Queue.Enqueue] (waits for the server), [Queue.EnqueueBatch]
// (sends all, then waits) or [Queue.EnqueueAsync] with [Queue.Flush]
// (back-pressure at queue.max_pending: it waits, never drops). Transient
// failures are retried within the caller's deadline. [WithKey] sets an
// idempotency key: the message id is the key plus a digest of the job, so
// a repeated job is stored once and distinct jobs under one key are all
// kept.
//
// Consume with [Queue.Consume] or [Queue.Run]: a handler per job, a
// concurrency limit, an ack only after the handler succeeds, a nak with
// exponential backoff after a failure, progress reports while a handler
// runs past half the ack wait, and after MaxDeliver attempts the job is
// copied to the dead-letter stream, with its last error and delivery count
// in headers, and terminated. A panic counts as a failure; a job that does
// not decode as T is dead-lettered at once with the decode error;
// [Permanent] dead-letters at once. Or take jobs one at a time with
// [Queue.Dequeue], in the seed's shape, and settle each with [Job.Ack],
// [Job.Fail] or [Job.Terminate]: nothing is acknowledged on receipt.
//
// Jobs above the server's max_payload travel through the JetStream object
// store by reference, or are refused with an error naming the size and the
// limit (queue.large_payloads). [Admin] lists, inspects, peeks at,
// requeues and purges queues without knowing their types; `loom queue` is
// built on it. Metrics are in package metrics (Metrics.Queue).
//
// Delivery is at least once: a job handled by a worker that dies before
// its ack is handled again. Make handlers idempotent, or use the job's Seq
// or Key to skip what was done.
package workqueue
