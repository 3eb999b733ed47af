// Package wire is the byte level of Loom's request plane: the connection
// preface, the frame header, the frame types and their payloads, a Reader
// that parses frames without allocating per frame, and a Writer that appends
// frames to one buffer so that many frames leave in one write.
//
// A connection starts with a [Preface] from each side. After that both sides
// exchange frames, each a fixed [HeaderSize]-byte header followed by a payload
// of at most the receiver's announced maximum frame size:
//
//	+--------+--------+-----------------+-----------------+---------
//	| type   | flags  | stream id       | payload length  | payload
//	| u8     | u8     | u32 big-endian  | u32 big-endian  | ...
//	+--------+--------+-----------------+-----------------+---------
//
// The full specification, precise enough for another implementation, is
// docs/protocol.md. The package knows nothing about connections, goroutines
// or streams' lifetimes; internal/mux builds those on top of it.
package wire
