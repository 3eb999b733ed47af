package loom

import (
	"context"
	"errors"

	"github.com/loomrt/loom/internal/mux"
)

func (rt *Runtime) startNATSPlane(ctx context.Context) (string, error) {
	return "", errors.New("loom: the nats request plane is not built yet")
}

func (rt *Runtime) openNATS(ctx context.Context, cand *Candidate, req mux.Request) (clientStream, error) {
	return nil, errors.New("loom: the nats request plane is not built yet")
}

func (rt *Runtime) stopNATSServing(ctx context.Context) error { return nil }

func (rt *Runtime) closeNATSCaller() error { return nil }
