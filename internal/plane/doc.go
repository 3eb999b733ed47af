// Package plane holds what Loom's two request planes share: the stream
// errors and their codes, the sentinels callers branch on, the request a
// caller sends, the defaults, and admission control (how many handlers
// run, how many streams wait, how many bytes they hold, and how much of
// that one peer may take).
//
// The TCP plane (internal/mux) and the NATS plane (internal/natsplane)
// both import it; neither imports the other for its vocabulary, so the
// two cannot drift apart.
package plane
