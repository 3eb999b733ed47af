package natsplane

import (
	"context"
	"errors"
	"fmt"

	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/wire"
)

// Streams end with the *plane.StreamError both request planes share, so
// that callers branch on codes the same way on both. These are the causes
// (StreamError.Err) and errors specific to NATS. Each wraps the plane
// sentinel of the same condition, so errors.Is against either holds.
var (
	// ErrServerGone is the cause of a Reset when no message or heartbeat
	// came from the server for a stream within the heartbeat timeout: the
	// server died, lost its NATS connection or forgot the stream.
	ErrServerGone = fmt.Errorf("natsplane: server stopped answering (%w)", plane.ErrConnLost)
	// ErrMessageLost is the cause of a Reset when a response message
	// went missing in transit (core NATS delivers at most once: a
	// reconnect or a slow consumer drops messages).
	ErrMessageLost = fmt.Errorf("natsplane: response message lost (%w)", plane.ErrConnLost)
	// ErrClientClosed is returned by Open after Client.Close and is the
	// cause of the streams Close ended.
	ErrClientClosed = fmt.Errorf("natsplane: client closed (%w)", plane.ErrPoolClosed)
	// ErrServerClosed is the context cause of streams killed by
	// Server.Close (or by Shutdown past its context).
	ErrServerClosed = fmt.Errorf("natsplane: server closed (%w)", plane.ErrServerClosed)
	// ErrCallerGone is the context cause of streams whose caller stopped
	// answering heartbeats for the server's ClientTimeout.
	ErrCallerGone = errors.New("natsplane: caller stopped answering heartbeats")
	// ErrConnClosed is the cause of streams ended because their side's
	// NATS connection was closed: the context cause on a server, the
	// cause of a Reset on a client.
	ErrConnClosed = fmt.Errorf("natsplane: NATS connection closed (%w)", plane.ErrConnLost)
)

// errKilled is the context cause of a stream the caller killed.
var errKilled = &plane.StreamError{Code: wire.CodeCancelled, Message: "stream killed by the caller"}

// ctxError is the stream error for an ended context.
func ctxError(ctx context.Context, before bool) *plane.StreamError {
	code := wire.CodeCancelled
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		code = wire.CodeDeadlineExceeded
	}
	return &plane.StreamError{Code: code, Message: ctx.Err().Error(), BeforeFirstResponse: before, Err: ctx.Err()}
}
