package natsplane

import (
	"context"
	"errors"
	"fmt"

	"github.com/loomrt/loom/internal/mux"
	"github.com/loomrt/loom/internal/wire"
)

// Streams end with the *mux.StreamError of the TCP plane, so that callers
// branch on codes the same way on both planes. These are the causes
// (StreamError.Err) and errors specific to NATS. Each wraps the mux
// sentinel of the same condition, so errors.Is against either holds.
var (
	// ErrServerGone is the cause of a Reset when no message or heartbeat
	// came from the server for a stream within the heartbeat timeout: the
	// server died, lost its NATS connection or forgot the stream.
	ErrServerGone = fmt.Errorf("natsplane: server stopped answering (%w)", mux.ErrConnLost)
	// ErrMessageLost is the cause of a Reset when a response message
	// went missing in transit (core NATS delivers at most once: a
	// reconnect or a slow consumer drops messages).
	ErrMessageLost = fmt.Errorf("natsplane: response message lost (%w)", mux.ErrConnLost)
	// ErrClientClosed is returned by Open after Client.Close and is the
	// cause of the streams Close ended.
	ErrClientClosed = fmt.Errorf("natsplane: client closed (%w)", mux.ErrPoolClosed)
	// ErrServerClosed is the context cause of streams killed by
	// Server.Close (or by Shutdown past its context).
	ErrServerClosed = fmt.Errorf("natsplane: server closed (%w)", mux.ErrServerClosed)
	// ErrCallerGone is the context cause of streams whose caller stopped
	// answering heartbeats for the server's ClientTimeout.
	ErrCallerGone = errors.New("natsplane: caller stopped answering heartbeats")
	// ErrConnClosed is the cause of streams ended because their side's
	// NATS connection was closed: the context cause on a server, the
	// cause of a Reset on a client.
	ErrConnClosed = fmt.Errorf("natsplane: NATS connection closed (%w)", mux.ErrConnLost)
)

// errKilled is the context cause of a stream the caller killed.
var errKilled = &mux.StreamError{Code: wire.CodeCancelled, Message: "stream killed by the caller"}

// ctxError is the stream error for an ended context.
func ctxError(ctx context.Context, before bool) *mux.StreamError {
	code := wire.CodeCancelled
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		code = wire.CodeDeadlineExceeded
	}
	return &mux.StreamError{Code: code, Message: ctx.Err().Error(), BeforeFirstResponse: before, Err: ctx.Err()}
}
