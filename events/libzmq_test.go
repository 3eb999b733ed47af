//go:build interop

package events_test

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/events"
)

// These tests prove wire compatibility with libzmq itself and with
// Dynamo's envelope, through Debian's python3-zmq (pyzmq on libzmq 4.3)
// and python3-msgpack: the Python side speaks Dynamo's format (4-part
// messages, its named-map envelope with published_at in milliseconds)
// with code Loom did not write. They run with -tags interop (.ci/run
// installs both packages first) and fail, never skip, saying what to
// install when either is missing.

const pyScript = `
import sys, zmq, json, struct, time, binascii, msgpack

ctx = zmq.Context()
T = 10000
DYNAMO_KEYS = ("topic", "publisher_id", "sequence", "published_at", "payload")

def frame(body):
    return struct.pack(">BI", 1, len(body)) + body

def envelope(seq):
    # Dynamo's EventEnvelope as rmp_serde::to_vec_named writes it: its
    # fields by name in declaration order, published_at in milliseconds,
    # the payload (the event, itself MessagePack) as bin.
    payload = msgpack.packb({"hashes": [seq], "note": "libzmq"}, use_bin_type=True)
    return msgpack.packb({"topic": "kv_events", "publisher_id": 77, "sequence": seq,
                          "published_at": time.time_ns() // 1000000, "payload": payload}, use_bin_type=True)

def dynamo_decode(body):
    # What Dynamo's decoder needs: a map with its five fields of the
    # right types (unknown keys are skipped, as serde does).
    env = msgpack.unpackb(body, raw=False)
    if not isinstance(env, dict):
        raise SystemExit("envelope is a %s, Dynamo needs a map" % type(env).__name__)
    for k in DYNAMO_KEYS:
        if k not in env:
            raise SystemExit("envelope lacks %s" % k)
    for k in ("publisher_id", "sequence", "published_at"):
        if not isinstance(env[k], int) or env[k] < 0 or env[k] >= 1 << 64:
            raise SystemExit("%s is %r, Dynamo needs a u64" % (k, env[k]))
    if not isinstance(env["topic"], str) or not isinstance(env["payload"], bytes):
        raise SystemExit("topic or payload of the wrong type: %r" % env)
    age_ms = time.time() * 1000 - env["published_at"]
    if not -60000 < age_ms < 60000:
        raise SystemExit("published_at %d is not now in milliseconds" % env["published_at"])
    return env

def out(*a):
    print(*a, flush=True)

def recv_event(s):
    parts = s.recv_multipart()
    if len(parts) != 4:
        raise SystemExit("a message of %d parts, Dynamo reads 4" % len(parts))
    subject, pid, seq, fr = parts
    (pid,), (seq,) = struct.unpack(">Q", pid), struct.unpack(">Q", seq)
    return subject, pid, seq, fr

mode = sys.argv[1]
if mode == "sub":
    # sub ENDPOINTS PREFIX N: a libzmq SUB receiving from Loom publishers,
    # reading each message as Dynamo does.
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVTIMEO, T)
    for ep in sys.argv[2].split(","):
        s.connect(ep)
    s.setsockopt(zmq.SUBSCRIBE, sys.argv[3].encode())
    out("ready")
    for _ in range(int(sys.argv[4])):
        subject, pid, seq, fr = recv_event(s)
        version, n = struct.unpack(">BI", fr[:5])
        if version != 1 or n != len(fr) - 5:
            raise SystemExit("bad frame header %r" % fr[:5])
        body = fr[5:]
        if body[:1] != b"{":
            env = dynamo_decode(body)
            if env["publisher_id"] != pid or env["sequence"] != seq:
                raise SystemExit("parts say %d/%d, envelope %d/%d" % (pid, seq, env["publisher_id"], env["sequence"]))
        out("msg", subject.decode(), binascii.hexlify(fr).decode())
elif mode == "pub":
    # pub N: a libzmq XPUB that binds, waits for a Loom SUB's
    # subscription, then publishes N events as Dynamo does.
    p = ctx.socket(zmq.XPUB)
    p.setsockopt(zmq.RCVTIMEO, T)
    p.setsockopt(zmq.LINGER, T)
    port = p.bind_to_random_port("tcp://127.0.0.1")
    out("endpoint", "tcp://127.0.0.1:%d" % port)
    out("subscription", binascii.hexlify(p.recv()).decode())
    for i in range(int(sys.argv[2])):
        p.send_multipart([b"namespace.interop.component.py.kv_events", struct.pack(">Q", 77), struct.pack(">Q", i), frame(envelope(i))])
    out("sent")
elif mode == "broker":
    # broker PUB_EP SUB_EP N: a libzmq XPUB and SUB through Loom's broker.
    p = ctx.socket(zmq.XPUB)
    p.setsockopt(zmq.RCVTIMEO, T)
    p.setsockopt(zmq.LINGER, T)
    p.connect(sys.argv[2])
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVTIMEO, T)
    s.connect(sys.argv[3])
    s.setsockopt(zmq.SUBSCRIBE, b"namespace.interop.component.py.")
    # Two subscriptions reach the publisher through the broker: the Loom
    # subscriber's and ours.
    subs = sorted(binascii.hexlify(p.recv()).decode() for _ in range(2))
    out("subscriptions", ",".join(subs))
    n = int(sys.argv[4])
    for i in range(n):
        p.send_multipart([b"namespace.interop.component.py.kv_events", struct.pack(">Q", 77), struct.pack(">Q", i), frame(envelope(i))])
    for _ in range(n):
        subject, pid, seq, fr = recv_event(s)
        dynamo_decode(fr[5:])
        out("msg", subject.decode(), binascii.hexlify(fr).decode())
elif mode == "decode":
    # decode HEX...: Dynamo's reading of NATS messages' envelopes.
    for hx in sys.argv[2:]:
        env = dynamo_decode(binascii.unhexlify(hx))
        out("env", json.dumps({k: env[k] for k in DYNAMO_KEYS if k != "payload"}, separators=(",", ":")), binascii.hexlify(env["payload"]).decode())
elif mode == "encode":
    # encode N: Dynamo envelopes for NATS, one hex line each.
    for i in range(int(sys.argv[2])):
        out("env", binascii.hexlify(envelope(i)).decode())
else:
    sys.exit("unknown mode " + mode)
`

var (
	pyOnce sync.Once
	pyPath string
	pyErr  error
)

// pyzmq returns a python interpreter that imports zmq and msgpack.
func pyzmq(t *testing.T) string {
	t.Helper()
	pyOnce.Do(func() {
		for _, p := range []string{"/usr/bin/python3", "python3"} {
			if err := exec.Command(p, "-c", "import zmq, msgpack").Run(); err == nil {
				pyPath = p
				return
			}
		}
		pyErr = fmt.Errorf("the interop tests need Debian's python3-zmq (pyzmq on libzmq) and python3-msgpack: `apt-get install -y python3-zmq python3-msgpack` (as root; .ci/run does it)")
	})
	if pyErr != nil {
		t.Fatal(pyErr)
	}
	return pyPath
}

// pyProc is the python script running in one mode.
type pyProc struct {
	t     *testing.T
	lines chan string
	cmd   *exec.Cmd
	errb  *strings.Builder
	done  chan struct{}
}

func startPy(t *testing.T, args ...string) *pyProc {
	t.Helper()
	py := pyzmq(t)
	script := filepath.Join(t.TempDir(), "interop.py")
	if err := os.WriteFile(script, []byte(pyScript), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, append([]string{script}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &pyProc{t: t, lines: make(chan string, 1024), cmd: cmd, errb: &strings.Builder{}, done: make(chan struct{})}
	cmd.Stderr = p.errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		s := bufio.NewScanner(stdout)
		s.Buffer(make([]byte, 1<<20), 1<<20)
		for s.Scan() {
			p.lines <- s.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
		close(p.lines)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		_ = cmd.Wait()
	})
	return p
}

// line returns the next line, which must start with prefix; it returns the
// rest of it.
func (p *pyProc) line(prefix string) string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.done
			_ = p.cmd.Wait()
			p.t.Fatalf("python exited before printing %q; stderr:\n%s", prefix, p.errb)
		}
		rest, found := strings.CutPrefix(l, prefix)
		if !found {
			p.t.Fatalf("python printed %q, want a line starting with %q", l, prefix)
		}
		return strings.TrimSpace(rest)
	case <-time.After(15 * time.Second):
		p.t.Fatalf("python did not print %q within 15s; stderr:\n%s", prefix, p.errb)
	}
	return ""
}

// decodeLine decodes "subject hexframe" as libzmq received it.
func decodeLine(t *testing.T, l string) (string, events.Envelope, string) {
	t.Helper()
	subject, hx, ok := strings.Cut(l, " ")
	if !ok {
		t.Fatalf("bad line %q", l)
	}
	raw, err := hex.DecodeString(hx)
	if err != nil {
		t.Fatal(err)
	}
	payload, rest, err := events.ParseFrame(raw, 1<<20)
	if err != nil || len(rest) != 0 {
		t.Fatalf("frame from libzmq: %v (%d bytes after it)", err, len(rest))
	}
	var env events.Envelope
	name, err := events.DecodeEnvelope(payload, &env)
	if err != nil {
		t.Fatal(err)
	}
	return subject, env, name
}

func TestInteropLibzmqSubscriberReceivesFromLoomPublishers(t *testing.T) {
	s := newSystem(t, "zmq")
	rt := s.Runtime()
	scope := events.Scope{Namespace: "interop", Component: "go"}
	pj := publisher[kv](t, rt, scope, "kv_events", events.WithCodec(codec.JSONName))
	pm := publisher[kv](t, rt, scope, "load_metrics")
	recs, err := rt.Discovery().List(t.Context(), discovery.Query{Namespace: "interop", Component: events.ChannelComponent})
	if err != nil || len(recs) != 2 {
		t.Fatalf("event channel records: %v %v", recs, err)
	}
	var eps []string
	for _, r := range recs {
		eps = append(eps, r.Address)
	}
	const n = 50
	py := startPy(t, "sub", strings.Join(eps, ","), "namespace.interop.", fmt.Sprint(2*n))
	py.line("ready")
	// The publishers see libzmq's subscription: its SUBSCRIBE message
	// parsed and matched.
	waitSubscribed(t, pj, 1)
	waitSubscribed(t, pm, 1)
	for i := range n {
		if err := pj.Publish(t.Context(), kv{Hashes: []uint64{uint64(i)}, Note: "json"}); err != nil {
			t.Fatal(err)
		}
		if err := pm.Publish(t.Context(), kv{Hashes: []uint64{uint64(i)}, Note: "msgpack"}); err != nil {
			t.Fatal(err)
		}
	}
	next := map[string]uint64{}
	for range 2 * n {
		subject, env, name := decodeLine(t, py.line("msg"))
		var v kv
		c, _ := codec.ByName(name)
		if err := c.Unmarshal(env.Payload, &v); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{codec.JSONName: "json", codec.MsgPackName: "msgpack"}[name]
		if env.Sequence != next[subject] || v.Hashes[0] != env.Sequence || v.Note != want || env.InstanceID != rt.ID() ||
			time.Since(time.Unix(0, env.PublishedAt)) > time.Minute {
			t.Fatalf("libzmq got %s %+v %+v, want sequence %d", subject, env, v, next[subject])
		}
		next[subject]++
	}
	if next["namespace.interop.component.go.kv_events"] != n || next["namespace.interop.component.go.load_metrics"] != n {
		t.Fatalf("per subject: %v", next)
	}
}

func TestInteropLoomSubscriberReceivesFromLibzmqPublisher(t *testing.T) {
	s := newSystem(t, "zmq")
	rt := s.Runtime()
	const n = 50
	py := startPy(t, "pub", fmt.Sprint(n))
	ep := py.line("endpoint")
	// A foreign publisher joins by registering its channel as Loom's do.
	rec := discovery.Instance{Namespace: "interop", Component: events.ChannelComponent, Endpoint: "kv_events", ID: 77,
		Transport: "zmq", Address: ep, Codec: "msgpack",
		Metadata: map[string]string{"subject": "namespace.interop.component.py.kv_events"}}
	if err := rt.Discovery().Register(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	sub := subscribe[kv](t, rt, events.Scope{Namespace: "interop", Component: events.Any}, "kv_events")
	if got, want := py.line("subscription"), hex.EncodeToString([]byte("\x01namespace.interop.component.")); got != want {
		t.Fatalf("libzmq XPUB received subscription %s, want %s", got, want)
	}
	py.line("sent")
	evs := collect(t, sub, n, 10*time.Second)
	for i, ev := range evs {
		if ev.Sequence != uint64(i) || ev.PublisherID != 77 || ev.Value.Hashes[0] != uint64(i) || ev.Value.Note != "libzmq" || ev.Codec != "msgpack" ||
			time.Since(ev.PublishedAt) > time.Minute || ev.PublishedAt.Nanosecond()%1e6 != 0 {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
	if st := sub.Stats(); st.Lost != 0 || st.Malformed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestInteropLibzmqPeersThroughLoomBroker(t *testing.T) {
	s := newSystem(t, "zmq-broker")
	rt := s.Runtime()
	sub := subscribe[kv](t, rt, events.Scope{Namespace: "interop", Component: events.Any}, "kv_events")
	const n = 50
	cfg := rt.Config().Events.ZMQ
	py := startPy(t, "broker", cfg.BrokerPub, cfg.BrokerSub, fmt.Sprint(n))
	want := []string{
		hex.EncodeToString([]byte("\x01namespace.interop.component.")),
		hex.EncodeToString([]byte("\x01namespace.interop.component.py.")),
	}
	if got := py.line("subscriptions"); got != strings.Join(want, ",") {
		t.Fatalf("the libzmq XPUB behind the broker received subscriptions %s, want %s", got, want)
	}
	for i := range n {
		_, env, _ := decodeLine(t, py.line("msg"))
		if env.Sequence != uint64(i) || env.PublisherID != 77 {
			t.Fatalf("libzmq SUB through the broker got %+v, want sequence %d", env, i)
		}
	}
	evs := collect(t, sub, n, 10*time.Second)
	for i, ev := range evs {
		if ev.Sequence != uint64(i) || ev.Value.Note != "libzmq" {
			t.Fatalf("Loom subscriber through the broker, event %d: %+v", i, ev)
		}
	}
}
