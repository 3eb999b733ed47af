package natsplane

import (
	"bytes"
	"net/textproto"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/internal/wire"
)

// headerBlock encodes h as nats.go puts it on the wire: values trimmed of
// white space at both ends, CR and LF replaced by spaces.
func headerBlock(h nats.Header) []byte {
	var b bytes.Buffer
	b.WriteString("NATS/1.0\r\n")
	for k, vs := range h {
		for _, v := range vs {
			b.WriteString(k)
			b.WriteString(": ")
			b.WriteString(strings.NewReplacer("\r", " ", "\n", " ").Replace(textproto.TrimString(v)))
			b.WriteString("\r\n")
		}
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// validKeyByte mirrors nats.go's check of header keys.
func validKeyByte(c byte) bool {
	return c >= 33 && c <= 126 && !strings.ContainsRune(`"()/,:;<=>?@[\]{}`, rune(c))
}

func FuzzEscape(f *testing.F) {
	for _, s := range []string{"", "plain", " both ends ", "%", "%41", "a\r\nb", "\x00\x7f\xff", "ünïcode", "key/with:colon"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v := escapeValue(s)
		if textproto.TrimString(v) != v || strings.ContainsAny(v, "\r\n") {
			t.Fatalf("escapeValue(%q) = %q would not survive a NATS header", s, v)
		}
		if back, err := unescape(v); err != nil || back != s {
			t.Fatalf("unescape(escapeValue(%q)) = %q, %v", s, back, err)
		}
		k := escapeKey(s)
		for i := 0; i < len(k); i++ {
			if !validKeyByte(k[i]) {
				t.Fatalf("escapeKey(%q) = %q holds %q, invalid in a NATS header key", s, k, k[i])
			}
		}
		if back, err := unescape(k); err != nil || back != s {
			t.Fatalf("unescape(escapeKey(%q)) = %q, %v", s, back, err)
		}
		// Whatever comes from the network: an error or a string, never
		// a panic.
		_, _ = unescape(s)
	})
}

// FuzzParseMessages feeds header blocks from the network to every parser of
// headers. What parses must be within the limits and survive re-encoding.
func FuzzParseMessages(f *testing.F) {
	o := openMsg{
		path: "ns/c/e", codec: "json", requestID: "r1", traceParent: "00-ab-cd-01",
		headers: map[string]string{"k": " v ", "a/b": "%"}, timeout: time.Second, heartbeat: 5 * time.Second,
		inbox: "_INBOX.abc", stream: 7, credit: 1000, hasCredit: true,
	}
	f.Add(headerBlock(encodeOpen(&o)), "_INBOX.abc.7")
	f.Add(headerBlock(nats.Header{hdrPath: {"p"}}), "_INBOX.x.y")
	f.Add(headerBlock(encodeControl(ctlMsg{kind: kindCredit, inbox: "_INBOX.abc", stream: 3, credit: 99})), "")
	f.Add(headerBlock(encodeControl(ctlMsg{kind: kindPong, inbox: "_INBOX.abc"})), "")
	f.Add(headerBlock(encodeEnd(4, wire.CodeApplication, "boom\r\n")), "")
	f.Add(headerBlock(data(5)), "")
	f.Add([]byte("NATS/1.0 503\r\n\r\n"), "")
	f.Add([]byte("NATS/1.0\r\nLoom-Path: %zz\r\nLoom-Timeout: -1\r\n\r\n"), "r")

	f.Fuzz(func(t *testing.T, block []byte, reply string) {
		h, err := nats.DecodeHeadersMsg(block)
		if err != nil {
			return
		}
		if o, err := parseOpen(h, reply); err == nil {
			switch {
			case o.path == "" || len(o.path) > wire.MaxPathLen,
				len(o.codec) > wire.MaxShortField, len(o.requestID) > wire.MaxShortField, len(o.traceParent) > wire.MaxShortField,
				len(o.headers) > wire.MaxHeaders, o.timeout < 0, o.heartbeat < 0,
				(o.inbox == "") != (o.stream == 0):
				t.Fatalf("parseOpen accepted %+v", o)
			}
			if err := checkRequest(o.path, o.codec, o.requestID, o.traceParent, o.headers); err != nil {
				t.Fatalf("parseOpen accepted a request a Client refuses: %v", err)
			}
			back, err := nats.DecodeHeadersMsg(headerBlock(encodeOpen(&o)))
			if err != nil {
				t.Fatal(err)
			}
			o2, err := parseOpen(back, reply)
			if err != nil || !reflect.DeepEqual(o, o2) {
				t.Fatalf("re-encoded request parses as %+v, %v; want %+v", o2, err, o)
			}
		}
		for _, kind := range []string{kindStop, kindKill, kindCredit, kindPong} {
			c, err := parseControl(kind, h)
			if err != nil {
				continue
			}
			back, err := nats.DecodeHeadersMsg(headerBlock(encodeControl(c)))
			if err != nil {
				t.Fatal(err)
			}
			if c2, err := parseControl(kind, back); err != nil || c2 != c {
				t.Fatalf("re-encoded %s parses as %+v, %v; want %+v", kind, c2, err, c)
			}
		}
		if seq, code, msg, err := parseEnd(h); err == nil {
			if len(msg) > wire.MaxMessageLen {
				t.Fatalf("END message of %d bytes accepted", len(msg))
			}
			back, _ := nats.DecodeHeadersMsg(headerBlock(encodeEnd(seq, code, msg)))
			if s2, c2, m2, err := parseEnd(back); err != nil || s2 != seq || c2 != code || m2 != msg {
				t.Fatalf("re-encoded END parses as %d %v %q, %v", s2, c2, m2, err)
			}
		}
		if seq, err := parseData(h); err == nil && seq == 0 {
			t.Fatal("DATA with seq 0 accepted")
		}
	})
}

func FuzzParseHeartbeat(f *testing.F) {
	f.Add(appendHeartbeat(appendHeartbeat(nil, 1, 0), 1<<40, 12345))
	f.Add([]byte{0, 0})
	f.Add([]byte{0x80})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, p []byte) {
		entries, err := parseHeartbeat(p)
		if err != nil {
			return
		}
		var b []byte
		for _, e := range entries {
			if e.id == 0 {
				t.Fatalf("stream 0 accepted in %x", p)
			}
			b = appendHeartbeat(b, e.id, e.blocked)
		}
		again, err := parseHeartbeat(b)
		if err != nil || !reflect.DeepEqual(again, entries) {
			t.Fatalf("re-encoded heartbeat parses as %v, %v; want %v", again, err, entries)
		}
	})
}
