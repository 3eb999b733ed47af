package discovery_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/loomrt/loom/discovery"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestKeyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		inst discovery.Instance
		key  string
	}{
		{"a plain instance", discovery.Instance{Namespace: "ns", Component: "c", Endpoint: "e", ID: 1}, "v1/instances/ns/c/e/1"},
		{"ids are lowercase hex", discovery.Instance{Namespace: "ns", Component: "c", Endpoint: "e", ID: 0xabc}, "v1/instances/ns/c/e/abc"},
		{"a nested namespace", discovery.Instance{Namespace: "a.b-c.d_e", Component: "my-comp", Endpoint: "gen_2", ID: 42}, "v1/instances/a.b-c.d_e/my-comp/gen_2/2a"},
		{"the largest JSON-safe id", discovery.Instance{Namespace: "ns", Component: "c", Endpoint: "e", ID: 1<<53 - 1}, "v1/instances/ns/c/e/1fffffffffffff"},
		{"the largest id", discovery.Instance{Namespace: "ns", Component: "c", Endpoint: "e", ID: 1<<64 - 1}, "v1/instances/ns/c/e/ffffffffffffffff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.inst.Key(); got != tc.key {
				t.Fatalf("Key() = %q; want %q", got, tc.key)
			}
			ns, c, e, id, err := discovery.ParseKey(tc.key)
			if err != nil {
				t.Fatalf("ParseKey(%q): %v", tc.key, err)
			}
			if ns != tc.inst.Namespace || c != tc.inst.Component || e != tc.inst.Endpoint || id != tc.inst.ID {
				t.Fatalf("ParseKey(%q) = %q, %q, %q, %#x; want %q, %q, %q, %#x", tc.key, ns, c, e, id,
					tc.inst.Namespace, tc.inst.Component, tc.inst.Endpoint, tc.inst.ID)
			}
		})
	}
}

func TestParseKeyRejects(t *testing.T) {
	for _, tc := range []struct {
		name, key string
	}{
		{"an empty key", ""},
		{"another prefix", "v1/event_channels/ns/c/e/1"},
		{"the prefix alone", "v1/instances/"},
		{"too few parts", "v1/instances/ns/c/1"},
		{"too many parts", "v1/instances/ns/c/e/f/1"},
		{"a trailing slash", "v1/instances/ns/c/e/1/"},
		{"id 0", "v1/instances/ns/c/e/0"},
		{"an empty id", "v1/instances/ns/c/e/"},
		{"a decimal-looking id with a letter past f", "v1/instances/ns/c/e/1g"},
		{"an uppercase id", "v1/instances/ns/c/e/A"},
		{"an id with a leading zero", "v1/instances/ns/c/e/0a"},
		{"an id with 0x", "v1/instances/ns/c/e/0x1"},
		{"an id with a sign", "v1/instances/ns/c/e/+1"},
		{"an id over 64 bits", "v1/instances/ns/c/e/10000000000000000"},
		{"an uppercase namespace", "v1/instances/NS/c/e/1"},
		{"an empty component", "v1/instances/ns//e/1"},
		{"a dotted endpoint", "v1/instances/ns/c/e.f/1"},
		{"a namespace ending in a dot", "v1/instances/ns./c/e/1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ns, c, e, id, err := discovery.ParseKey(tc.key); err == nil {
				t.Fatalf("ParseKey(%q) = %q, %q, %q, %#x, nil; want an error", tc.key, ns, c, e, id)
			}
		})
	}
}

// FuzzParseKey checks that keys read from a shared store, written by anyone,
// never panic the parser, and that a key it accepts is exactly the key of
// the instance it describes.
func FuzzParseKey(f *testing.F) {
	for _, seed := range []string{
		"v1/instances/ns/c/e/1",
		"v1/instances/a.b/c-d/e_f/1fffffffffffff",
		"v1/instances/ns/c/e/A",
		"v1/instances/ns/c/e/0a",
		"v1/instances/ns/c/e/0",
		"v1/instances//c/e/1",
		"v1/instances/ns/c/e/1/",
		"v1/instances/",
		"",
		"v1/instances/ns/c/e/ffffffffffffffff",
		"v1/instances/\xff/c/e/1",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, key string) {
		ns, c, e, id, err := discovery.ParseKey(key)
		if err != nil {
			if ns != "" || c != "" || e != "" || id != 0 {
				t.Fatalf("ParseKey(%q) failed but returned parts %q, %q, %q, %#x", key, ns, c, e, id)
			}
			return
		}
		inst := discovery.Instance{Namespace: ns, Component: c, Endpoint: e, ID: id}
		if err := inst.Validate(); err != nil {
			t.Fatalf("ParseKey(%q) accepted an invalid instance: %v", key, err)
		}
		if got := inst.Key(); got != key {
			t.Fatalf("ParseKey(%q) = %+v, whose Key() is %q", key, inst, got)
		}
	})
}

func TestQuery(t *testing.T) {
	ace := discovery.Instance{Namespace: "a", Component: "c", Endpoint: "e", ID: 1}
	for _, tc := range []struct {
		name    string
		q       discovery.Query
		prefix  string
		matches []discovery.Instance
		misses  []discovery.Instance
	}{
		{
			name:    "an empty query covers every instance",
			q:       discovery.Query{},
			prefix:  "v1/instances/",
			matches: []discovery.Instance{ace, {Namespace: "zz.y", Component: "x", Endpoint: "w", ID: 9}},
		},
		{
			name:    "a namespace covers its components but not longer or nested names",
			q:       discovery.Query{Namespace: "a"},
			prefix:  "v1/instances/a/",
			matches: []discovery.Instance{ace, {Namespace: "a", Component: "d", Endpoint: "f", ID: 2}},
			misses:  []discovery.Instance{{Namespace: "ab", Component: "c", Endpoint: "e", ID: 1}, {Namespace: "a.b", Component: "c", Endpoint: "e", ID: 1}},
		},
		{
			name:    "a nested namespace covers only itself",
			q:       discovery.Query{Namespace: "a.b"},
			prefix:  "v1/instances/a.b/",
			matches: []discovery.Instance{{Namespace: "a.b", Component: "c", Endpoint: "e", ID: 1}},
			misses:  []discovery.Instance{ace, {Namespace: "a.b.c", Component: "c", Endpoint: "e", ID: 1}},
		},
		{
			name:    "a component covers its endpoints",
			q:       discovery.Query{Namespace: "a", Component: "c"},
			prefix:  "v1/instances/a/c/",
			matches: []discovery.Instance{ace, {Namespace: "a", Component: "c", Endpoint: "f", ID: 1}},
			misses:  []discovery.Instance{{Namespace: "a", Component: "cd", Endpoint: "e", ID: 1}, {Namespace: "b", Component: "c", Endpoint: "e", ID: 1}},
		},
		{
			name:    "an endpoint covers its instances",
			q:       discovery.Query{Namespace: "a", Component: "c", Endpoint: "e"},
			prefix:  "v1/instances/a/c/e/",
			matches: []discovery.Instance{ace, {Namespace: "a", Component: "c", Endpoint: "e", ID: 0xff}},
			misses:  []discovery.Instance{{Namespace: "a", Component: "c", Endpoint: "ef", ID: 1}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.q.Validate(); err != nil {
				t.Fatalf("Validate(): %v", err)
			}
			if got := tc.q.Prefix(); got != tc.prefix {
				t.Fatalf("Prefix() = %q; want %q", got, tc.prefix)
			}
			check := func(inst discovery.Instance, want bool) {
				t.Helper()
				if got := tc.q.Matches(inst); got != want {
					t.Errorf("Matches(%s) = %v; want %v", inst.Key(), got, want)
				}
				// Backends that select by key prefix must agree with Matches.
				if got := strings.HasPrefix(inst.Key(), tc.q.Prefix()); got != want {
					t.Errorf("key %s has prefix %s = %v; want %v", inst.Key(), tc.q.Prefix(), got, want)
				}
			}
			for _, inst := range tc.matches {
				check(inst, true)
			}
			for _, inst := range tc.misses {
				check(inst, false)
			}
		})
	}
}

func TestQueryValidateRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		q    discovery.Query
		want string // in the error
	}{
		{"a component without a namespace", discovery.Query{Component: "c"}, "without a namespace"},
		{"an endpoint without a namespace", discovery.Query{Endpoint: "e"}, "without a namespace"},
		{"an endpoint without a component", discovery.Query{Namespace: "a", Endpoint: "e"}, "without a component"},
		{"a bad namespace", discovery.Query{Namespace: "A"}, `invalid namespace name "A"`},
		{"a bad component", discovery.Query{Namespace: "a", Component: "c/d"}, `invalid component name "c/d"`},
		{"a bad endpoint", discovery.Query{Namespace: "a", Component: "c", Endpoint: "e.f"}, `invalid endpoint name "e.f"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.q.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestNameErrors(t *testing.T) {
	long := strings.Repeat("x", 129)
	for _, tc := range []struct {
		name     string
		err      error
		kind     string
		bad      string
		rule     string
		contains []string
	}{
		{"an empty component", discovery.ValidateName("component", ""), "component", "", discovery.NameRule, []string{"invalid component name", "empty", discovery.NameRule}},
		{"an uppercase endpoint", discovery.ValidateName("endpoint", "Gen"), "endpoint", "Gen", discovery.NameRule, []string{"invalid endpoint name", `"Gen"`, discovery.NameRule}},
		{"a component with a dot", discovery.ValidateName("component", "a.b"), "component", "a.b", discovery.NameRule, []string{"invalid component name", `"a.b"`, discovery.NameRule}},
		{"a name too long", discovery.ValidateName("endpoint", long), "endpoint", long, discovery.NameRule, []string{"invalid endpoint name", long, "at most 128 characters"}},
		{"an empty namespace", discovery.ValidateNamespace(""), "namespace", "", discovery.NamespaceRule, []string{"invalid namespace name", "empty", discovery.NamespaceRule}},
		{"a namespace with an empty part", discovery.ValidateNamespace("a..b"), "namespace", "a..b", discovery.NamespaceRule, []string{"invalid namespace name", `"a..b"`, discovery.NamespaceRule}},
		{"a namespace with a slash", discovery.ValidateNamespace("a/b"), "namespace", "a/b", discovery.NamespaceRule, []string{`"a/b"`, discovery.NamespaceRule}},
		{"a namespace starting with a dot", discovery.ValidateNamespace(".a"), "namespace", ".a", discovery.NamespaceRule, []string{`".a"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ne *discovery.NameError
			if !errors.As(tc.err, &ne) {
				t.Fatalf("error %v (%T) is not a *NameError", tc.err, tc.err)
			}
			if ne.Kind != tc.kind || ne.Name != tc.bad || !strings.HasPrefix(ne.Rule, tc.rule) {
				t.Errorf("NameError = %+v; want kind %q, name %q, rule %q", ne, tc.kind, tc.bad, tc.rule)
			}
			for _, s := range tc.contains {
				if !strings.Contains(tc.err.Error(), s) {
					t.Errorf("error %q does not contain %q", tc.err, s)
				}
			}
		})
	}
}

func TestValidNames(t *testing.T) {
	for _, name := range []string{"a", "a-b_c", "0", strings.Repeat("x", 128)} {
		if err := discovery.ValidateName("component", name); err != nil {
			t.Errorf("ValidateName(%q): %v", name, err)
		}
		if err := discovery.ValidateNamespace(name); err != nil {
			t.Errorf("ValidateNamespace(%q): %v", name, err)
		}
	}
	for _, ns := range []string{"a.b", "a.b.c", "x-1.y_2"} {
		if err := discovery.ValidateNamespace(ns); err != nil {
			t.Errorf("ValidateNamespace(%q): %v", ns, err)
		}
	}
}

func TestInstanceValidate(t *testing.T) {
	ok := discovery.Instance{Namespace: "a.b", Component: "c", Endpoint: "e", ID: 1}
	if err := ok.Validate(); err != nil {
		t.Fatalf("Validate(%+v): %v", ok, err)
	}
	zero := ok
	zero.ID = 0
	err := zero.Validate()
	if err == nil || !strings.Contains(err.Error(), "a.b/c/e") || !strings.Contains(err.Error(), "id 0") {
		t.Fatalf("Validate() of id 0 = %v; want an error naming the instance and id 0", err)
	}
}

func TestEventKindString(t *testing.T) {
	for k, want := range map[discovery.EventKind]string{
		discovery.Added: "added", discovery.Removed: "removed", discovery.Synced: "synced", 0: "EventKind(0)", 9: "EventKind(9)",
	} {
		if got := k.String(); got != want {
			t.Errorf("EventKind(%d).String() = %q; want %q", k, got, want)
		}
	}
}

func TestDecodeValueReadsLoomsAndDynamosRecords(t *testing.T) {
	inst, err := discovery.DecodeValue([]byte(`{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo","instance_id":7587888,"transport":{"nats_tcp":"dynamo_backend.generate-73c750"}}`))
	if err != nil || inst.Transport != "dynamo/nats_tcp" || inst.Address != "dynamo_backend.generate-73c750" || inst.ID != 7587888 || inst.Path() != "dynamo/backend/generate" {
		t.Fatalf("Dynamo's record: %+v %v", inst, err)
	}
	inst, err = discovery.DecodeValue([]byte(`{"namespace":"a","component":"b","endpoint":"c","instance_id":1,"transport":"tcp","address":"h:1","codec":"json"}`))
	if err != nil || inst.Transport != "tcp" || inst.Codec != "json" {
		t.Fatalf("Loom's record: %+v %v", inst, err)
	}
	for name, v := range map[string]string{
		"not JSON":           `{`,
		"a model record":     `{"type":"Model","namespace":"a","component":"b","endpoint":"c","instance_id":1,"card_json":{}}`,
		"no transport":       `{"type":"Endpoint","namespace":"a","component":"b","endpoint":"c","instance_id":1}`,
		"no instance id":     `{"type":"Endpoint","namespace":"a","component":"b","endpoint":"c","transport":{"tcp":"h:1"}}`,
		"a tag not a string": `{"type":1}`,
	} {
		if _, err := discovery.DecodeValue([]byte(v)); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func FuzzDecodeValue(f *testing.F) {
	f.Add([]byte(`{"type":"Endpoint","component":"c","endpoint":"e","namespace":"n","instance_id":1,"transport":{"tcp":"h:1"}}`))
	f.Add([]byte(`{"namespace":"n","component":"c","endpoint":"e","instance_id":1,"transport":"tcp","address":"h:1"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		inst, err := discovery.DecodeValue(data)
		if err != nil {
			return
		}
		// What decodes re-encodes, as Loom writes it, to the same.
		b, err := json.Marshal(inst)
		if err != nil {
			t.Fatal(err)
		}
		again, err := discovery.DecodeValue(b)
		if err != nil || again.Key() != inst.Key() || again.Transport != inst.Transport || again.Address != inst.Address {
			t.Fatalf("%+v re-encoded decodes as %+v, %v", inst, again, err)
		}
	})
}

func TestRandomIDsStayWhereJSONKeepsThemExact(t *testing.T) {
	if uint64(float64(discovery.MaxID)) != discovery.MaxID {
		t.Fatalf("MaxID %d does not survive a float64", uint64(discovery.MaxID))
	}
	var high bool
	for range 10000 {
		id := discovery.RandomID()
		if id == 0 || id > discovery.MaxID {
			t.Fatalf("RandomID() = %d, want 1..%d", id, uint64(discovery.MaxID))
		}
		high = high || id > discovery.MaxID/2
		// An id read back as a float64, as a JavaScript client reads it,
		// is the same id.
		b, _ := json.Marshal(discovery.Instance{ID: id})
		var back struct {
			ID float64 `json:"instance_id"`
		}
		if err := json.Unmarshal(b, &back); err != nil || uint64(back.ID) != id {
			t.Fatalf("id %d read back as %v (%v)", id, back.ID, err)
		}
	}
	if !high {
		t.Fatal("10000 RandomID draws never reached the upper half of the range")
	}
}
