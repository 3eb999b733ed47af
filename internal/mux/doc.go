// Package mux is Loom's request plane over TCP: many concurrent streams
// multiplexed on pooled connections, with the frames of internal/wire.
//
// A client [Pool] opens a [ClientStream] with one OPEN frame that carries
// the whole request; the [Server] runs its [Handler] for the stream, which
// answers with any number of messages ([ServerStream.Send]) and ends the
// stream by returning. A stream admitted at once starts on the connection's
// reader goroutine; a handler still running after
// [ServerConfig.InlineBudget], or about to wait for credit, hands the
// reading over to another goroutine and goes on as a worker, so a slow
// handler never holds up its connection for longer than the budget. Responses are flow controlled per
// stream: the client grants credit as the caller consumes messages, so a
// slow reader bounds what the server buffers. A stream that moved a whole
// window and whose caller then finds nothing to read widens its window, up
// to [ClientConfig.MaxWindow], so that a fast stream does not stall on
// credit in flight. The caller can stop a stream
// (the handler finishes gracefully) or kill it (the handler's context is
// cancelled); a deadline on the caller's context travels with the request.
//
// On the client, a caller waiting for a response on a connection nobody
// is reading reads the socket itself, delivering what other streams get
// on the way, as a raw TCP client reads its own answer; the connection's
// reader goroutine reads while streams are open whose callers are not
// reading, and on an idle connection, so that PINGs, GOAWAY and a close
// are seen. A caller whose stream is killed while it reads is interrupted
// by a past read deadline, and the frame it was reading resumes with the
// next reader.
//
// Each connection has one reader and one writer goroutine. Frames
// from every stream are appended to one batch that the writer sends in one
// write once the previous write returns, so under load many frames share a
// system call. Streamed DATA that came while the writer wrote waits, up
// to 50 µs, for 32 KiB of it before the writer's next write (a fast
// stream would otherwise settle into ever smaller writes); any other
// frame, and a writer that was idle, write at once. A goroutine that would
// otherwise wait for that write (one ending a burst with an OPEN or an
// END, or a handler out of credit) writes the batch itself when no write
// is in flight. The writer also
// runs keepalive: a silent connection gets a PING and is dropped, failing
// its streams with [ErrConnLost], when nothing comes back in time.
//
// A caller done with a stream that it gave to no one else may
// [ClientStream.Release] it instead of closing it: a stream that ended by
// the server's END, with nothing else able to reach it, then serves a
// later call, which saves a unary call its largest client-side allocation.
// Whatever kept the stream from its earlier call (a reader's cache, the
// stall and connection-loss paths) checks its connection and stream id
// under the stream's lock before acting on it.
//
// Errors that end a stream are [*StreamError] values with a wire.Code;
// match them with errors.Is against the sentinels ([ErrOverloaded],
// [ErrDraining], ...). [StreamError.BeforeFirstResponse] tells whether the
// caller saw any response, which decides whether it may retry elsewhere.
//
// The wire format is specified in docs/protocol.md.
package mux
