package testutil

import "go.uber.org/goleak"

// LeakOptions are the goroutines a package's goleak check ignores because
// they belong to a library, not to Loom, and that library cannot stop them.
//
// nats.go's asynchronous JetStream publisher (used by work queues and the
// JetStream event transport) starts a goroutine that reads its connection
// status channel under a lock; when the publisher is cleaned up before that
// goroutine first runs, it reads a nil channel and blocks forever (nats.go
// v1.55.0, jetstream/publish.go resetPendingAcksOnReconnect and
// jetstream.go cleanupReplySub).
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
	}
}
