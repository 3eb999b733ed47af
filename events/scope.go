package events

import (
	"fmt"
	"strings"

	"github.com/loomrt/loom/discovery"
)

// Scope is where events are published: a namespace, a component of a
// namespace, or an endpoint of a component. A subscription's scope may
// hold the wildcard "*" in any of its parts.
type Scope struct {
	Namespace string
	Component string // "" for a namespace's events
	Endpoint  string // "" for a namespace's or a component's events
}

// Wildcards. In a subscription's scope, Any matches one name (any
// namespace, any component, any endpoint). As a topic, Any matches any one
// topic and All matches every event at or below the scope.
const (
	Any = "*"
	All = ">"
)

// ParseScope parses "namespace", "namespace/component" or
// "namespace/component/endpoint"; parts may be "*" (see Scope).
func ParseScope(s string) (Scope, error) {
	parts := strings.Split(s, "/")
	if len(parts) > 3 || s == "" {
		return Scope{}, fmt.Errorf("events: scope %q: want namespace, namespace/component or namespace/component/endpoint", s)
	}
	var sc Scope
	sc.Namespace = parts[0]
	if len(parts) > 1 {
		sc.Component = parts[1]
	}
	if len(parts) > 2 {
		sc.Endpoint = parts[2]
	}
	if err := sc.validate(true); err != nil {
		return Scope{}, err
	}
	return sc, nil
}

// String returns the scope as ParseScope reads it.
func (s Scope) String() string {
	out := s.Namespace
	if s.Component != "" {
		out += "/" + s.Component
		if s.Endpoint != "" {
			out += "/" + s.Endpoint
		}
	}
	return out
}

// Wild reports whether the scope holds a wildcard.
func (s Scope) Wild() bool {
	return s.Namespace == Any || s.Component == Any || s.Endpoint == Any
}

// validate checks the names; wild allows "*" parts.
func (s Scope) validate(wild bool) error {
	check := func(kind, name string, ok func() error) error {
		if name == Any {
			if !wild {
				return fmt.Errorf("events: a publisher's scope cannot hold the wildcard %q (in %s %q); name one %s", Any, kind, s, kind)
			}
			return nil
		}
		if err := ok(); err != nil {
			return fmt.Errorf("events: scope %q: %w", s, err)
		}
		return nil
	}
	if err := check("namespace", s.Namespace, func() error { return discovery.ValidateNamespace(s.Namespace) }); err != nil {
		return err
	}
	if s.Component == "" {
		if s.Endpoint != "" {
			return fmt.Errorf("events: scope %+v names an endpoint without a component", s)
		}
		return nil
	}
	if err := check("component", s.Component, func() error { return discovery.ValidateName("component", s.Component) }); err != nil {
		return err
	}
	if s.Endpoint == "" {
		return nil
	}
	return check("endpoint", s.Endpoint, func() error { return discovery.ValidateName("endpoint", s.Endpoint) })
}

// ValidateTopic checks a topic name: it follows the rule of component and
// endpoint names (discovery.NameRule).
func ValidateTopic(topic string) error {
	if err := discovery.ValidateName("topic", topic); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	return nil
}

// nsDot encodes the dots of nested namespaces, so that a namespace is one
// subject token: "a.b" becomes "a%2Eb". '%' is not allowed in names, so the
// encoding cannot collide with a real name.
const nsDot = "%2E"

func encodeNamespace(ns string) string {
	if ns == Any {
		return ns
	}
	return strings.ReplaceAll(ns, ".", nsDot)
}

// Subject returns the subject events of topic in scope are published on:
//
//	namespace.{ns}[.component.{c}[.endpoint.{e}]].{topic}
//
// with the dots of a nested namespace written as %2E. A scope with
// wildcards, or the topics "*" and ">", give a subscription pattern.
func Subject(scope Scope, topic string) (string, error) {
	if err := scope.validate(true); err != nil {
		return "", err
	}
	if topic != Any && topic != All {
		if err := ValidateTopic(topic); err != nil {
			return "", err
		}
	}
	var b strings.Builder
	b.Grow(32 + len(scope.Namespace) + len(scope.Component) + len(scope.Endpoint) + len(topic))
	b.WriteString("namespace.")
	b.WriteString(encodeNamespace(scope.Namespace))
	if scope.Component != "" {
		b.WriteString(".component.")
		b.WriteString(scope.Component)
		if scope.Endpoint != "" {
			b.WriteString(".endpoint.")
			b.WriteString(scope.Endpoint)
		}
	}
	b.WriteByte('.')
	b.WriteString(topic)
	return b.String(), nil
}

// ParseSubject splits an event subject into its scope and topic. It is the
// inverse of Subject for subjects without wildcards.
func ParseSubject(subject string) (Scope, string, error) {
	t := strings.Split(subject, ".")
	bad := func() (Scope, string, error) {
		return Scope{}, "", fmt.Errorf("events: subject %q is not namespace.{ns}[.component.{c}[.endpoint.{e}]].{topic}", subject)
	}
	if len(t) < 3 || t[0] != "namespace" {
		return bad()
	}
	// An empty token would leave its part of the scope unset, and the
	// scope would read as a wider one (a component's event as the
	// namespace's): such a subject is refused, never widened.
	empty := func(kind string) (Scope, string, error) {
		return Scope{}, "", fmt.Errorf("events: subject %q has an empty %s name; a subject names every part of its scope (namespace.{ns}[.component.{c}[.endpoint.{e}]].{topic})", subject, kind)
	}
	sc := Scope{Namespace: strings.ReplaceAll(t[1], nsDot, ".")}
	switch len(t) {
	case 3:
	case 5:
		if t[2] != "component" {
			return bad()
		}
		if t[3] == "" {
			return empty("component")
		}
		sc.Component = t[3]
	case 7:
		if t[2] != "component" || t[4] != "endpoint" {
			return bad()
		}
		if t[3] == "" {
			return empty("component")
		}
		if t[5] == "" {
			return empty("endpoint")
		}
		sc.Component, sc.Endpoint = t[3], t[5]
	default:
		return bad()
	}
	topic := t[len(t)-1]
	if err := sc.validate(false); err != nil {
		return Scope{}, "", err
	}
	if err := ValidateTopic(topic); err != nil {
		return Scope{}, "", err
	}
	return sc, topic, nil
}

// matchSubject reports whether subject matches pattern with NATS's rules:
// "*" matches one token, a final ">" one or more.
func matchSubject(pattern, subject string) bool {
	for {
		pt, prest, pmore := strings.Cut(pattern, ".")
		if pt == ">" && !pmore {
			return subject != ""
		}
		st, srest, smore := strings.Cut(subject, ".")
		if pt != "*" && pt != st {
			return false
		}
		if !pmore || !smore {
			return pmore == smore
		}
		pattern, subject = prest, srest
	}
}

// literalPrefix returns the part of a pattern before its first wildcard
// token: the byte prefix every matching subject starts with.
func literalPrefix(pattern string) string {
	i := 0
	for {
		j := strings.IndexByte(pattern[i:], '.')
		tok := pattern[i:]
		if j >= 0 {
			tok = pattern[i : i+j]
		}
		if tok == "*" || tok == ">" {
			return pattern[:i]
		}
		if j < 0 {
			return pattern
		}
		i += j + 1
	}
}
