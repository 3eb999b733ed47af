// Package natsplane is Loom's request plane over NATS, for instances that
// cannot reach each other directly. It has the shape of the TCP plane
// (internal/mux): a [Client] opens a [ClientStream] that carries one
// request; the [Server] runs its [Handler] for it, which answers with any
// number of messages and ends the stream by returning. Streams end with
// io.EOF or a *plane.StreamError with a wire.Code, flow control bounds what
// a slow reader makes the server hold, a caller can stop (graceful) or
// kill a stream, and the caller's deadline travels with the request.
//
// # Subjects
//
// A server subscribes to one literal subject S of its choosing (one per
// instance, "loom.rpc.<instance hex>" for example). Requests and the
// callers' control messages both arrive there, on one subscription, so a
// caller's messages reach the server in the order it sent them. A Client
// subscribes once to "<inbox>.*", where inbox is nc.NewInbox() (so a
// custom inbox prefix applies); stream n of the Client receives on
// "<inbox>.n" (decimal, n >= 1, counting up from 1) and heartbeats arrive
// on "<inbox>.0". Nothing subscribes per call.
//
// # Messages
//
// Every message is one NATS message with headers; Loom-Kind says what it
// is. Header keys are case-sensitive. String values are escaped so that
// any bytes survive NATS headers: '%', bytes below 0x20, 0x7f and a space
// at either end become %XX (upper-case hex); numbers are decimal.
//
// Request (caller to S, reply subject "<inbox>.<n>"), payload = request:
//
//	Loom-Kind: open
//	Loom-Version: 1           (absent = 1; another value: END Protocol)
//	Loom-Path: <path>         (required, 1 to 65535 bytes)
//	Loom-Codec, Loom-Request-Id, Loom-Traceparent: optional, <= 255 bytes
//	Loom-Timeout: <ns>        time left before the caller's deadline, relative
//	                          so clock skew does not move it; absent = none
//	Loom-Inbox: <inbox>       with Loom-Stream: <n>; the reply subject must be
//	Loom-Stream: <n>          "<inbox>.<n>"
//	Loom-Credit: <bytes>      initial credit; absent = ServerConfig.InitialWindow
//	Loom-Heartbeat: <ns>      how soon the caller wants to notice a silent
//	                          server (the Go client sends the shorter of its
//	                          StallTimeout and HeartbeatTimeout); the server
//	                          then heartbeats it at least every third of it
//	Loom-H-<key>: <value>     the caller's own headers, up to 64; the key is
//	                          escaped too, with every byte a NATS header key
//	                          may not hold (and '%') as %XX
//
// A request without Loom-Inbox and Loom-Stream (from `nats request`, say)
// is served and answered on its reply subject, without heartbeats or
// control messages; having no way to grant credit, its stream is killed
// if it runs out of its initial credit. A request that cannot be parsed
// is answered with END BadRequest.
//
// Server to caller, on the request's reply subject "<inbox>.<n>":
//
//	DATA  Loom-Kind: data, Loom-Seq: <k>   payload = one response; k = 1, 2, ...
//	END   Loom-Kind: end, Loom-Seq: <count of DATA sent>, Loom-Code: <wire.Code>,
//	      Loom-Message: <text, <= 1024 bytes>   empty payload; ends the stream
//
// Caller to S, control (Loom-Inbox and Loom-Stream name the stream):
//
//	STOP    Loom-Kind: stop     the handler sees Stopped and finishes
//	KILL    Loom-Kind: kill     the handler's context is cancelled; nothing more is sent
//	CREDIT  Loom-Kind: credit, Loom-Credit: <total>   cumulative credit granted so
//	        far, initial credit included, so a lost or repeated CREDIT does no harm
//	PONG    Loom-Kind: pong     (Loom-Inbox only) answers a heartbeat
//
// Heartbeat, server to "<inbox>.0": Loom-Kind: hb, Loom-Server: S, payload =
// for each of the caller's streams open on the server (running or queued),
// uvarint stream id then uvarint blocked, where blocked is 0, or 1 + the
// cumulative credit the server has seen if its handler is waiting for
// credit. Streams past the max payload go in further heartbeats. A
// caller answers (PONG, and CREDIT or KILL as below) only a heartbeat
// whose Loom-Server is a server it has called and has not been silent
// for a minute since: anyone may publish on the inbox, and an answer
// goes where Loom-Server says.
//
// # Flow control
//
// Credit is counted in bytes: a DATA costs len(payload) + [MessageOverhead].
// The server sends while the cost sent is below the credit granted, so it
// overshoots by at most one message; Send blocks otherwise. The caller
// grants the cost of what Recv consumed once it reaches half the initial
// window. A slow reader thus bounds what is in flight and buffered per
// stream to about the window, and the handler waits in Send.
//
// # Liveness and loss
//
// Core NATS delivers at most once; every loss is detected, none hangs a
// stream:
//
//   - Each server heartbeats every caller with open streams (every
//     HeartbeatInterval, or a third of the caller's Loom-Heartbeat if
//     shorter); the caller answers PONG. A caller stream not refreshed by a
//     DATA, an END or a heartbeat listing it within ClientConfig.HeartbeatTimeout
//     fails with Reset (cause [ErrServerGone]; BeforeFirstResponse if nothing
//     had arrived): the server died, lost its connection, never got the
//     request or its END was lost.
//   - A server from which nothing at all (DATA, END or heartbeat) arrived
//     for ClientConfig.StallTimeout while a stream waited for its first
//     response is stalled (frozen or overloaded): such streams fail with
//     Reset before the first response (cause plane.ErrStalled), so the
//     caller may send the request elsewhere, and Open to that server fails
//     at once (plane.ErrUnreachable wrapping plane.ErrStalled), but for
//     one request every StallProbeInterval, until it is heard from again.
//   - A server kills the streams of a caller it has not heard from (any
//     message from its inbox) within ServerConfig.ClientTimeout, with cause
//     [ErrCallerGone].
//   - A gap in Loom-Seq, or an END whose Loom-Seq is not the count received,
//     fails the stream with Reset (cause [ErrMessageLost]).
//   - A heartbeat that shows a stream waiting for less credit than the caller
//     granted makes the caller resend its CREDIT; one that lists a stream the
//     caller has ended makes it resend KILL (at most 64 per heartbeat; the
//     server leaves killed streams out, so any others follow at the next).
//   - A request to a subject nobody subscribes to gets the NATS "no
//     responders" status at once: the stream fails with NotFound before the
//     first response, wrapping nats.ErrNoResponders.
//
// # Admission and shutdown
//
// Admission is the TCP plane's (internal/plane's Admission):
// MaxConcurrentStreams handlers run, QueueSize requests wait holding at
// most 64 MiB, running ones at most MaxRunningBytes, one caller at most
// MaxStreamsPerCaller (a stream the caller killed counts until its
// handler returns); any more are answered at once with END Overloaded. Server.Shutdown
// answers new requests with END Draining, waits for the streams it has,
// then unsubscribes; Server.Close kills them, sending END Reset.
//
// A request or response must fit in one NATS message (nc.MaxPayload, 1 MiB
// by default); a larger one is refused before sending with an error that
// wraps plane.ErrTooLarge and names both sizes.
package natsplane
