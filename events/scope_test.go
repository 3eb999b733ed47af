package events_test

import (
	"strings"
	"testing"

	"github.com/loomrt/loom/events"
)

func TestSubjectsFollowDynamosLayoutWithNamespacesAsOneToken(t *testing.T) {
	for _, c := range []struct {
		scope events.Scope
		topic string
		want  string
	}{
		{events.Scope{Namespace: "dynamo"}, "kv-hit-rate", "namespace.dynamo.kv-hit-rate"},
		{events.Scope{Namespace: "dynamo", Component: "VllmWorker"}, "kv_events", ""},
		{events.Scope{Namespace: "dynamo", Component: "vllm_worker"}, "kv_events", "namespace.dynamo.component.vllm_worker.kv_events"},
		{events.Scope{Namespace: "dynamo", Component: "backend", Endpoint: "generate"}, "load_metrics", "namespace.dynamo.component.backend.endpoint.generate.load_metrics"},
		{events.Scope{Namespace: "prod.eu.llm", Component: "w"}, "kv_events", "namespace.prod%2Eeu%2Ellm.component.w.kv_events"},
		{events.Scope{Namespace: "dynamo", Component: "*"}, "kv_events", "namespace.dynamo.component.*.kv_events"},
		{events.Scope{Namespace: "*", Component: "w"}, ">", "namespace.*.component.w.>"},
		{events.Scope{Namespace: "dynamo", Endpoint: "generate"}, "kv", ""},
		{events.Scope{Namespace: "dynamo"}, "kv.events", ""},
		{events.Scope{}, "kv", ""},
	} {
		got, err := events.Subject(c.scope, c.topic)
		if c.want == "" {
			if err == nil {
				t.Errorf("Subject(%+v, %q) = %q, want an error", c.scope, c.topic, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Subject(%+v, %q) = %q, %v; want %q", c.scope, c.topic, got, err, c.want)
			continue
		}
		if c.scope.Wild() || c.topic == events.All {
			continue
		}
		sc, topic, err := events.ParseSubject(got)
		if err != nil || sc != c.scope || topic != c.topic {
			t.Errorf("ParseSubject(%q) = %+v %q %v; want %+v %q", got, sc, topic, err, c.scope, c.topic)
		}
	}
}

func TestParseScope(t *testing.T) {
	for in, want := range map[string]string{
		"dynamo":            "dynamo",
		"dynamo/backend":    "dynamo/backend",
		"dynamo/*/generate": "dynamo/*/generate",
		"a.b/c":             "a.b/c",
		"":                  "",
		"Dynamo":            "",
		"a/b/c/d":           "",
		"dynamo//x":         "",
	} {
		sc, err := events.ParseScope(in)
		if want == "" {
			if err == nil {
				t.Errorf("ParseScope(%q) = %+v, want an error", in, sc)
			}
			continue
		}
		if err != nil || sc.String() != want {
			t.Errorf("ParseScope(%q) = %v %v, want %s", in, sc, err, want)
		}
	}
}

func TestPublisherScopesCannotHoldWildcards(t *testing.T) {
	s := newSystem(t, "nats")
	rt := s.Runtime()
	_, err := events.NewPublisher[int](t.Context(), rt, events.Scope{Namespace: "dyn", Component: "*"}, "kv_events")
	if err == nil || !strings.Contains(err.Error(), "wildcard") {
		t.Fatalf("got %v, want an error about the wildcard", err)
	}
	_, err = events.NewPublisher[int](t.Context(), rt, events.Scope{Namespace: "dyn"}, ">")
	if err == nil {
		t.Fatal("a publisher took the topic >")
	}
}

// FuzzParseSubject: a subject from the network either is refused, or
// names a concrete scope and topic that Subject writes back as the same
// subject.
func FuzzParseSubject(f *testing.F) {
	for _, s := range []string{
		"namespace.dynamo.kv-hit-rate",
		"namespace.dynamo.component.vllm_worker.kv_events",
		"namespace.dynamo.component.backend.endpoint.generate.load_metrics",
		"namespace.prod%2Eeu%2Ellm.component.w.kv_events",
		"namespace.*.component.w.>",
		"namespace.%2E.t",
		"namespace..t",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, subject string) {
		sc, topic, err := events.ParseSubject(subject)
		if err != nil {
			if !strings.Contains(err.Error(), "events:") {
				t.Fatalf("error %q does not say it is the events package's", err)
			}
			return
		}
		if sc.Wild() || topic == events.Any || topic == events.All {
			t.Fatalf("ParseSubject(%q) = %+v %q: a pattern, not a subject", subject, sc, topic)
		}
		back, err := events.Subject(sc, topic)
		if err != nil || back != subject {
			t.Fatalf("ParseSubject(%q) = %+v %q, which Subject writes as %q, %v", subject, sc, topic, back, err)
		}
	})
}
