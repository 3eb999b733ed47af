package mocker

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestPrefillNoticesAreReadStrictly: a prefill notice and its answer
// come off core NATS from any publisher. What is not one is an error
// naming the field to send, never a notice for the job "".
func TestPrefillNoticesAreReadStrictly(t *testing.T) {
	if d, err := decodePrefillDone([]byte(`{"request_id":"1f-3","extra":[1]}`)); err != nil || d.RequestID != "1f-3" {
		t.Errorf("a notice of job 1f-3: %+v, %v", d, err)
	}
	for _, in := range []string{``, `null`, `{}`, `{"request_id":""}`, `{"request_id":5}`, `[]`, `"1f-3"`, `{"request_id":"1f-3"`, "\xff"} {
		d, err := decodePrefillDone([]byte(in))
		if err == nil || !strings.Contains(err.Error(), "request_id") {
			t.Errorf("notice %q: %+v, %v; want an error naming request_id", in, d, err)
		}
	}
	for in, want := range map[string]bool{`{"known":true}`: true, `{"known":false,"x":1}`: false} {
		if a, err := decodePrefillDoneAck([]byte(in)); err != nil || a.Known != want {
			t.Errorf("answer %q: %+v, %v; want known %v", in, a, err, want)
		}
	}
	for _, in := range []string{``, `null`, `{}`, `{"known":"yes"}`, `{"known":null}`, `[true]`} {
		a, err := decodePrefillDoneAck([]byte(in))
		if err == nil || !strings.Contains(err.Error(), "known") {
			t.Errorf("answer %q: %+v, %v; want an error naming known", in, a, err)
		}
	}
}

// TestPrefillNoticeWireShape pins the subject and bodies docs/llm.md
// gives for the notice, which a prefill worker in another language sends.
func TestPrefillNoticeWireShape(t *testing.T) {
	for _, tc := range []struct {
		ns   string
		id   uint64
		want string
	}{{"llm", 0x1f, "llm_prefill_done.llm.1f"}, {"prod.eu", 0xffffffffffffffff, "llm_prefill_done.prod%2Eeu.ffffffffffffffff"}} {
		if got := PrefillDoneSubject(tc.ns, tc.id); got != tc.want {
			t.Errorf("PrefillDoneSubject(%q, %x) = %q, want %q", tc.ns, tc.id, got, tc.want)
		}
	}
	for v, want := range map[any]string{PrefillDone{RequestID: "1f-3"}: `{"request_id":"1f-3"}`, PrefillDoneAck{Known: true}: `{"known":true}`, PrefillDoneAck{}: `{"known":false}`} {
		if b, err := json.Marshal(v); err != nil || string(b) != want {
			t.Errorf("%#v encodes as %s (%v), want %s", v, b, err, want)
		}
	}
}

// FuzzPrefillDone: whatever bytes arrive as a notice or an answer, the
// decoders return a value that encodes back to what they read, or an
// error naming the field; they never panic.
func FuzzPrefillDone(f *testing.F) {
	for _, s := range []string{`{"request_id":"1f-3"}`, `{"known":true}`, `{}`, `null`, `{"request_id":"\u0000"}`, `{"request_id":"a","request_id":"b"}`, "{\"request_id\":\"\xff\"}", `[{"known":false}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if d, err := decodePrefillDone(data); err != nil {
			if !strings.Contains(err.Error(), "request_id") {
				t.Fatalf("notice %q: error %q names no field", data, err)
			}
		} else {
			if d.RequestID == "" {
				t.Fatalf("notice %q read with no request_id", data)
			}
			b, _ := json.Marshal(d)
			if again, err := decodePrefillDone(b); err != nil || again != d {
				t.Fatalf("notice %q read as %+v, which reads back as %+v, %v", data, d, again, err)
			}
		}
		if a, err := decodePrefillDoneAck(data); err != nil {
			if !strings.Contains(err.Error(), "known") {
				t.Fatalf("answer %q: error %q names no field", data, err)
			}
		} else {
			b, _ := json.Marshal(a)
			if again, err := decodePrefillDoneAck(b); err != nil || again != a {
				t.Fatalf("answer %q read as %+v, which reads back as %+v, %v", data, a, again, err)
			}
		}
	})
}
