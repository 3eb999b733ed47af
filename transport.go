package loom

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/planes"
	"github.com/loomrt/loom/internal/wire"
)

// This file is the runtime's side of its request planes, which
// internal/planes manages: the transport names, and the table of the
// endpoints served here that requests arriving on any plane are
// dispatched through.

// Transports are the request planes a runtime serves and calls on. Each
// served endpoint's discovery record names its transport and address;
// callers in other processes follow the record, callers in this process
// take the local fast path.
const (
	TransportTCP   = planes.TCP
	TransportNATS  = planes.NATS
	TransportLocal = planes.Local // reachable only inside its own process
)

// pathTable maps the paths of the endpoints a runtime serves to them, and
// serves the requests its planes receive. Every request reads it, and
// endpoints come and go rarely: a read is an atomic load and a lookup in
// a map that is never written, which a change replaces whole.
type pathTable struct {
	mu sync.Mutex                         // serialises changes
	m  atomic.Pointer[map[string]*served] // endpoint path -> *served; nil: empty
}

var _ planes.Handler = (*pathTable)(nil)

func (t *pathTable) add(s *served) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.copy()
	m[s.ep.path] = s
	t.m.Store(&m)
}

// remove removes s if it is still the endpoint served at its path.
func (t *pathTable) remove(s *served) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.load(s.ep.path) != s {
		return
	}
	m := t.copy()
	delete(m, s.ep.path)
	t.m.Store(&m)
}

// copy returns a copy of the table to change; t.mu is held.
func (t *pathTable) copy() map[string]*served {
	if p := t.m.Load(); p != nil {
		return maps.Clone(*p)
	}
	return make(map[string]*served)
}

// load returns the endpoint served at path, or nil.
func (t *pathTable) load(path string) *served {
	if p := t.m.Load(); p != nil {
		return (*p)[path]
	}
	return nil
}

// StreamContext is the parent of the transport context of a request for
// path: the endpoint's, so that the request needs no context of its own
// (each costs allocations and a lock on the parent).
func (t *pathTable) StreamContext(path string) context.Context {
	if s := t.load(path); s != nil {
		return s.streamParent()
	}
	return nil
}

// servedKey is the key under which a served endpoint's request parents
// (see served.parents) hold it.
type servedKey struct{}

// ServeStream serves one request that arrived over the network.
func (t *pathTable) ServeStream(s planes.Stream, stop context.Context) error {
	ctx := s.Context()
	var sv *served
	if s.DerivedContext() {
		// StreamContext looked the path up already: its parent holds the
		// endpoint. One removed since is draining and refuses the request
		// as retryable, or failed to register and has cancelled it.
		sv, _ = ctx.Value(servedKey{}).(*served)
	}
	if sv == nil {
		if sv = t.load(s.Path()); sv == nil {
			return plane.Errorf(wire.CodeNotFound, "%s is not served by this instance (its discovery record is stale)", s.Path())
		}
	}
	c, err := codec.ByName(s.Codec())
	if err != nil {
		return plane.Errorf(wire.CodeBadRequest, "%s: %v", s.Path(), err)
	}
	sv.m.BytesIn.Add(len(s.Payload()))
	if sv.intercepted() {
		ctx = context.WithValue(ctx, callKey{}, &Call{Side: ServerSide, RequestID: s.RequestID(), Header: s.Headers(), traceParent: s.TraceParent()})
	}
	_, out, err := sv.raw(ctx, stop, c, s.Payload(), s, s.DerivedContext())
	sv.m.BytesOut.Add(out)
	return toWire(err)
}
