// Package natsconn builds the NATS connection that every Loom plane built on
// NATS shares: the NATS request plane, events, work queues and the EventBus.
//
// [Connect] turns a [config.NATS] into a connected *nats.Conn: the server
// URLs (NATS_SERVER), one of the four auth modes Dynamo uses (user/password,
// token, NKey, credentials file, from the NATS_AUTH_* variables), TLS and
// mutual TLS (their files, like the credentials file, read again at every
// reconnect, so renewed ones are used without a restart), reconnect
// settings, and logging of disconnects and reconnects through log/slog: a
// server that stays down is a warning at the first failed reconnect
// attempt and once a minute after, not at every attempt. An asynchronous
// error, such as an operation the server refuses for want of permission,
// is logged at once the first time for its kind and subject and its
// repeats once a minute, with their number, however fast they come and
// however many subjects they name; [WithMetrics] counts each refusal.
//
// Connect fails fast and says why: a refused credential is reported at once
// with the URL, the auth mode and the variables to check, never as a
// timeout; an unreachable server is reported within the connect timeout with
// the URLs tried and where they came from ([WithURLSource]).
package natsconn
