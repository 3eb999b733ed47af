// Package embedded runs the servers Loom depends on inside the calling
// process: a real nats-server (with JetStream) today.
//
// It serves the one-process demo, `loom up`, and the tests of every other
// package, which use real servers instead of mocks:
//
//	ns, err := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
//	if err != nil {
//		t.Fatal(err)
//	}
//	t.Cleanup(ns.Shutdown)
//	nc, err := nats.Connect(ns.ClientURL())
//
// Servers are quiet unless given a logger, listen on 127.0.0.1 on a free port
// unless told otherwise, and never install signal handlers: the process that
// embeds them owns its signals.
package embedded
