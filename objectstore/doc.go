// Package objectstore keeps large payloads in the JetStream object store,
// and lets work queues and the EventBus carry them by reference.
//
// A NATS message is limited to the server's max_payload (1 MiB by
// default). [Store] puts and gets objects of any size, streaming from an
// io.Reader and to an io.Writer in chunks, with the SHA-256 digest checked
// on the way out. [Offloader] is what the work queues and the EventBus use:
// a payload above the limit is either stored as an object and replaced by a
// [Ref] in the message's [RefHeader], or refused with a [*TooLargeError]
// naming the size and the limit — never a timeout.
//
// A reference is data from the network: [ParseRef] checks it and
// [Offloader.Resolve] reads at most the size it claims, bounded by a limit,
// and verifies the object's size and digest against it.
package objectstore
