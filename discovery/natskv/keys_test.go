package natskv

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/loomrt/loom/discovery"
)

func TestKeyEncoding(t *testing.T) {
	for _, tc := range []struct {
		inst discovery.Instance
		key  string
	}{
		{inst("ns", "c", "e", 1), "v1.instances.ns.c.e.1"},
		{inst("prod.eu-west_1", "vllm-worker", "generate_v2", 0x694d9b6c1ad2b), "v1.instances.prod=eu-west_1.vllm-worker.generate_v2.694d9b6c1ad2b"},
		{inst("a.b.c", "c", "e", 1<<53-1), "v1.instances.a=b=c.c.e.1fffffffffffff"},
	} {
		if got := kvKey(tc.inst); got != tc.key {
			t.Errorf("kvKey(%s) = %q; want %q", tc.inst.Key(), got, tc.key)
		}
		got, err := parseKey(tc.key)
		if err != nil || got.Key() != tc.inst.Key() {
			t.Errorf("parseKey(%q) = %s, %v; want %s", tc.key, got.Key(), err, tc.inst.Key())
		}
	}
}

func TestQueriesBecomeSubjectFilters(t *testing.T) {
	for _, tc := range []struct {
		q    discovery.Query
		want string
	}{
		{discovery.Query{}, "v1.instances.>"},
		{discovery.Query{Namespace: "a"}, "v1.instances.a.>"},
		{discovery.Query{Namespace: "a.b"}, "v1.instances.a=b.>"},
		{discovery.Query{Namespace: "a.b", Component: "c"}, "v1.instances.a=b.c.>"},
		{discovery.Query{Namespace: "a", Component: "c", Endpoint: "e"}, "v1.instances.a.c.e.*"},
	} {
		if got := filter(tc.q); got != tc.want {
			t.Errorf("filter(%+v) = %q; want %q", tc.q, got, tc.want)
		}
	}
}

func TestParseKeyRejectsWhatKVKeyNeverWrites(t *testing.T) {
	for _, key := range []string{
		"",
		"v1.instances",
		"v2.instances.ns.c.e.1",
		"v1/instances/ns/c/e/1",
		"v1.instances.ns.c.e",
		"v1.instances.ns.c.e.1.x",
		"v1.instances.ns.c.e.01",
		"v1.instances.ns.c.e.A",
		"v1.instances.ns.c.e.0",
		"v1.instances.ns.c.e.10000000000000000",
		"v1.instances.NS.c.e.1",
		"v1.instances.=ns.c.e.1",
		"v1.instances.ns=.c.e.1",
		"v1.instances.a==b.c.e.1",
		"v1.instances.a/b.c.e.1",
		"v1.instances.ns.c=d.e.1",
		"v1.instances.ns.c.e*.1",
		"v1.instances." + strings.Repeat("n", 129) + ".c.e.1",
	} {
		if got, err := parseKey(key); err == nil {
			t.Errorf("parseKey(%q) = %s; want an error", key, got.Key())
		}
	}
}

// FuzzDecode feeds records as another writer could leave them: decode must
// never panic, and what it accepts must round-trip.
func FuzzDecode(f *testing.F) {
	good, _ := json.Marshal(inst("a.b", "c", "e", 0x2a))
	f.Add("v1.instances.a=b.c.e.2a", good)
	f.Add("v1.instances.a=b.c.e.2a", []byte(`{"namespace":"a.b","component":"c","endpoint":"e","instance_id":42,"metadata":{"x":"y"},"extra":[1]}`))
	f.Add("v1.instances.a.c.e.2a", good)
	f.Add("v1.instances.a=b.c.e.02a", good)
	f.Add("v1.instances..c.e.1", []byte(`null`))
	f.Add("v1.instances.a=b.c.e.2a", []byte(`{"instance_id":1e400}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		i, err := decode(key, value)
		if err != nil {
			return
		}
		if err := i.Validate(); err != nil {
			t.Fatalf("decode(%q) accepted an invalid instance: %v", key, err)
		}
		if kvKey(i) != key {
			t.Fatalf("decode(%q) = %s, whose key is %q", key, i.Key(), kvKey(i))
		}
	})
}

// FuzzDecodeLast feeds answers to a request for a subject's latest
// message: decodeLast must never panic, and a message it accepts has a
// revision and headers.
func FuzzDecodeLast(f *testing.F) {
	f.Add([]byte(`{"type":"io.nats.jetstream.api.v1.stream_msg_get_response","message":{"subject":"$KV.b.k","seq":7,"hdrs":"TkFUUy8xLjANCkxvb20tT3duZXI6IGFiDQpOYXRzLVRUTDogMTBzDQoNCg==","data":"e30=","time":"2026-01-01T00:00:00Z"}}`))
	f.Add([]byte(`{"message":{"seq":3}}`))
	f.Add([]byte(`{"error":{"code":404,"err_code":10037,"description":"no message found"}}`))
	f.Add([]byte(`{"error":{"code":503,"err_code":10008,"description":"jetstream not enabled"}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"message":{"seq":1,"hdrs":"TkFUUy8xLjANCg=="}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, found, err := decodeLast("$KV.b.k", data)
		if err != nil || !found {
			if found || m.seq != 0 || m.header != nil {
				t.Fatalf("decodeLast(%q) = %+v, %v, %v; want nothing with an error or not found", data, m, found, err)
			}
			return
		}
		if m.header == nil {
			t.Fatalf("decodeLast(%q) found a message without a header map", data)
		}
	})
}
