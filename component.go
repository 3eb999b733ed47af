package loom

import (
	"context"
	"fmt"
	"strings"

	"github.com/loomrt/loom/discovery"
)

// Namespace groups components; namespaces may nest with ".".
type Namespace struct {
	rt   *Runtime
	name string
}

// Name returns the namespace's name.
func (n *Namespace) Name() string { return n.name }

// Component returns the component called name in this namespace, creating
// it on first use. A name that breaks the naming rule is an error that
// names it and the rule.
func (n *Namespace) Component(name string) (*Component, error) {
	if err := discovery.ValidateName("component", name); err != nil {
		return nil, fmt.Errorf("loom: %w", err)
	}
	return n.rt.component(n, name)
}

// Component is a named part of a program that serves endpoints. Its
// context is a child of the runtime's; cancelling it (Shutdown) cancels its
// endpoints and their requests, never the runtime.
type Component struct {
	ns     *Namespace
	name   string
	ctx    context.Context
	cancel context.CancelFunc

	endpoints map[string]*Endpoint // guarded by rt.mu
}

// Name returns the component's name.
func (c *Component) Name() string { return c.name }

// Namespace returns the namespace the component belongs to.
func (c *Component) Namespace() *Namespace { return c.ns }

// Context returns the component's context: done when the component or its
// runtime shuts down.
func (c *Component) Context() context.Context { return c.ctx }

// Endpoint returns the endpoint called name of this component, creating it
// on first use.
func (c *Component) Endpoint(name string) (*Endpoint, error) {
	if err := discovery.ValidateName("endpoint", name); err != nil {
		return nil, fmt.Errorf("loom: %w", err)
	}
	return c.ns.rt.endpoint(c, name)
}

// Shutdown gracefully shuts down every endpoint the component serves (see
// Endpoint.Shutdown), then cancels the component's context.
func (c *Component) Shutdown(ctx context.Context) error {
	err := shutdownAll(ctx, c.ns.rt.endpointsOf(c), false)
	c.cancel()
	return err
}

// Close stops the component now: every endpoint it serves leaves
// discovery and the requests it is serving are cancelled at once (see
// Endpoint.Close).
func (c *Component) Close() error {
	err := shutdownAll(context.Background(), c.ns.rt.endpointsOf(c), true)
	c.cancel()
	return err
}

// Endpoint is the address of a served function, ns/component/endpoint, in
// one runtime. Serve it with Serve; call it with NewClient.
type Endpoint struct {
	comp   *Component
	name   string
	path   string
	ctx    context.Context
	cancel context.CancelFunc

	served *served // guarded by rt.mu
}

// Name returns the endpoint's name.
func (e *Endpoint) Name() string { return e.name }

// Component returns the component the endpoint belongs to.
func (e *Endpoint) Component() *Component { return e.comp }

// Path returns "namespace/component/endpoint".
func (e *Endpoint) Path() string { return e.path }

// String returns the endpoint's path.
func (e *Endpoint) String() string { return e.path }

// Context returns the endpoint's context, the parent of every request it
// serves: done when the endpoint, its component or the runtime shuts down.
func (e *Endpoint) Context() context.Context { return e.ctx }

// Runtime returns the runtime the endpoint belongs to.
func (e *Endpoint) Runtime() *Runtime { return e.comp.ns.rt }

func (e *Endpoint) query() discovery.Query {
	return discovery.Query{Namespace: e.comp.ns.name, Component: e.comp.name, Endpoint: e.name}
}

// Shutdown stops serving the endpoint in this runtime: it refuses new
// requests (callers retry elsewhere), removes the instance from discovery,
// and waits for in-flight requests to finish until ctx ends. Requests still
// running then are cancelled, and Shutdown returns an error saying how many
// without waiting further. The endpoint cannot be served again.
func (e *Endpoint) Shutdown(ctx context.Context) error {
	err := shutdownAll(ctx, []*Endpoint{e}, false)
	e.cancel()
	return err
}

// Close stops serving the endpoint in this runtime now: it refuses new
// requests, removes the instance from discovery and cancels the requests
// in flight at once, without an error for them. The endpoint cannot be
// served again.
func (e *Endpoint) Close() error {
	err := shutdownAll(context.Background(), []*Endpoint{e}, true)
	e.cancel()
	return err
}

// ParsePath splits "namespace/component/endpoint" and checks each name.
func ParsePath(path string) (ns, component, endpoint string, err error) {
	parts := strings.Split(path, "/")
	if len(parts) != 3 {
		return "", "", "", fmt.Errorf("loom: endpoint path %q: want namespace/component/endpoint", path)
	}
	inst := discovery.Instance{Namespace: parts[0], Component: parts[1], Endpoint: parts[2], ID: 1}
	if err := inst.Validate(); err != nil {
		return "", "", "", fmt.Errorf("loom: endpoint path %q: %w", path, err)
	}
	return parts[0], parts[1], parts[2], nil
}
