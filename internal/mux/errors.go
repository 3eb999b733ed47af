package mux

import "github.com/loomrt/loom/internal/plane"

// StreamError is how a stream ends with an error; see plane.StreamError.
// Both request planes use the one type.
type StreamError = plane.StreamError

// Errorf returns a *StreamError with code and a formatted message. A
// handler returns one to end its stream with a code other than
// Application.
var Errorf = plane.Errorf

// Sentinels to match stream errors by code with errors.Is; the same
// values as plane's.
var (
	ErrApplication      = plane.ErrApplication
	ErrNotFound         = plane.ErrNotFound
	ErrOverloaded       = plane.ErrOverloaded
	ErrDraining         = plane.ErrDraining
	ErrCancelled        = plane.ErrCancelled
	ErrDeadlineExceeded = plane.ErrDeadlineExceeded
	ErrInternal         = plane.ErrInternal
	ErrProtocol         = plane.ErrProtocol
	ErrBadRequest       = plane.ErrBadRequest
	ErrReset            = plane.ErrReset

	// ErrConnLost is the cause of every stream error due to a connection
	// that died: closed by the peer, a failed write, or a keepalive
	// timeout. Streams fail with a Reset *StreamError that wraps it.
	ErrConnLost = plane.ErrConnLost
	// ErrUnreachable wraps a failure to connect to an instance in Open.
	ErrUnreachable = plane.ErrUnreachable
	// ErrStalled wraps the error of a stream failed, or an Open refused,
	// because its server stopped answering while streams waited on it.
	ErrStalled = plane.ErrStalled
	// ErrPoolClosed is returned by Open after Pool.Close.
	ErrPoolClosed = plane.ErrPoolClosed
	// ErrServerClosed is returned by Serve after Shutdown or Close, and
	// is the context cause of streams killed by Close.
	ErrServerClosed = plane.ErrServerClosed
	// ErrStreamDone is returned by Send after the stream has ended.
	ErrStreamDone = plane.ErrStreamDone
	// ErrTooLarge is wrapped by Open and Send errors for messages above
	// the peer's maximum frame size.
	ErrTooLarge = plane.ErrTooLarge
)

// Request is what Pool.Open sends in one OPEN frame.
type Request = plane.Request
