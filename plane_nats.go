package loom

import (
	"context"
	"fmt"

	"github.com/loomrt/loom/internal/mux"
	"github.com/loomrt/loom/internal/natsplane"
)

// natsSubject is the subject a runtime serves its endpoints on when
// request_plane.transport is nats: one per instance.
func natsSubject(id uint64) string { return fmt.Sprintf("loom.rpc.%x", id) }

// startNATSPlane serves on the runtime's NATS subject; rt.planes.mu is held.
func (rt *Runtime) startNATSPlane(ctx context.Context) (string, error) {
	p := &rt.planes
	if p.natsSrv != nil {
		return p.natsSrv.Address(), nil
	}
	nc, err := rt.NATS(ctx)
	if err != nil {
		return "", fmt.Errorf("request_plane.transport nats: %w", err)
	}
	rc := rt.cfg.RequestPlane
	srv, err := natsplane.NewServer(nc, natsSubject(rt.id), natsplane.ServerConfig{
		MaxConcurrentStreams: rc.MaxConcurrentStreams,
		QueueSize:            rc.QueueSize,
		MaxStreamsPerCaller:  rc.MaxStreamsPerConn,
		MaxRunningBytes:      rc.MaxRunningBytes,
		Logger:               rt.log,
		OnLimit:              rt.metrics.LimitHit,
	}, natsplane.HandlerFunc(func(s *natsplane.ServerStream) error { return serveStream(rt, s) }))
	if err != nil {
		return "", err
	}
	p.natsSrv = srv
	return srv.Address(), nil
}

// openNATS starts a call to an instance that serves on NATS.
func (rt *Runtime) openNATS(ctx context.Context, cand *Candidate, req mux.Request) (clientStream, error) {
	p := &rt.planes
	p.mu.Lock()
	c := p.natsCli
	p.mu.Unlock()
	if c == nil {
		nc, err := rt.NATS(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: %s instance %x serves on NATS: %v", ErrUnreachable, cand.Path(), cand.ID, err)
		}
		p.mu.Lock()
		if p.natsCli == nil {
			p.natsCli = natsplane.NewClient(nc, natsplane.ClientConfig{Logger: rt.log})
		}
		c = p.natsCli
		p.mu.Unlock()
	}
	s, err := c.Open(ctx, cand.Address, req)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (rt *Runtime) stopNATSServing(ctx context.Context) error {
	p := &rt.planes
	p.mu.Lock()
	srv := p.natsSrv
	p.mu.Unlock()
	if srv == nil {
		return nil
	}
	if err := srv.Shutdown(ctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("loom: nats request plane shutdown: %w", err)
	}
	return nil
}

// closeNATSCaller closes the NATS plane's client; rt.planes.mu is held.
func (rt *Runtime) closeNATSCaller() error {
	if rt.planes.natsCli == nil {
		return nil
	}
	return rt.planes.natsCli.Close()
}
