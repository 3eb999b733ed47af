package events_test

import (
	"bufio"
	"context"
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

// These tests prove wire compatibility with libzmq itself, through
// Debian's python3-zmq (pyzmq on libzmq 4.3). When it is missing and the
// test runs as root with apt-get, the test installs it; otherwise it
// fails, saying what to install. It never skips: a ZeroMQ transport whose
// compatibility went untested would look like one that passed.

const pyScript = `
import sys, zmq, json, struct, time, binascii

ctx = zmq.Context()
T = 10000

def frame(body):
    return struct.pack(">BI", 1, len(body)) + body

def envelope(seq):
    return json.dumps({"publisher_id": 77, "sequence": seq, "published_at": time.time_ns(),
                       "topic": "kv_events", "payload": {"hashes": [seq], "note": "libzmq"}}).encode()

def out(*a):
    print(*a, flush=True)

mode = sys.argv[1]
if mode == "sub":
    # sub ENDPOINTS PREFIX N: a libzmq SUB receiving from Loom publishers.
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVTIMEO, T)
    for ep in sys.argv[2].split(","):
        s.connect(ep)
    s.setsockopt(zmq.SUBSCRIBE, sys.argv[3].encode())
    out("ready")
    for _ in range(int(sys.argv[4])):
        subject, fr = s.recv_multipart()
        out("msg", subject.decode(), binascii.hexlify(fr).decode())
elif mode == "pub":
    # pub N: a libzmq XPUB that binds, waits for a Loom SUB's
    # subscription, then publishes N events.
    p = ctx.socket(zmq.XPUB)
    p.setsockopt(zmq.RCVTIMEO, T)
    p.setsockopt(zmq.LINGER, T)
    port = p.bind_to_random_port("tcp://127.0.0.1")
    out("endpoint", "tcp://127.0.0.1:%d" % port)
    out("subscription", binascii.hexlify(p.recv()).decode())
    for i in range(int(sys.argv[2])):
        p.send_multipart([b"namespace.interop.component.py.kv_events", frame(envelope(i))])
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
        p.send_multipart([b"namespace.interop.component.py.kv_events", frame(envelope(i))])
    for _ in range(n):
        subject, fr = s.recv_multipart()
        out("msg", subject.decode(), binascii.hexlify(fr).decode())
else:
    sys.exit("unknown mode " + mode)
`

var (
	pyOnce sync.Once
	pyPath string
	pyErr  error
)

// pyzmq returns a python interpreter that imports zmq, installing Debian's
// python3-zmq first if it can.
func pyzmq(t *testing.T) string {
	t.Helper()
	pyOnce.Do(func() {
		find := func() string {
			for _, p := range []string{"/usr/bin/python3", "python3"} {
				if err := exec.Command(p, "-c", "import zmq").Run(); err == nil {
					return p
				}
			}
			return ""
		}
		if pyPath = find(); pyPath != "" {
			return
		}
		if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
			pyErr = fmt.Errorf("libzmq interop needs Debian's python3-zmq (pyzmq on libzmq); install it with `apt-get install -y python3-zmq` (as root), or pyzmq for /usr/bin/python3")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", "-c", "apt-get update -qq && apt-get install -y -qq python3-zmq")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			pyErr = fmt.Errorf("installing python3-zmq for the libzmq interop test failed (%v); install it by hand with `apt-get install -y python3-zmq`:\n%s", err, out)
			return
		}
		if pyPath = find(); pyPath == "" {
			pyErr = fmt.Errorf("python3-zmq installed, but neither /usr/bin/python3 nor python3 imports zmq")
		}
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

func TestLibzmqSubscriberReceivesFromLoomPublishers(t *testing.T) {
	s := newSystem(t, "zmq")
	rt := s.runtime()
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
		if env.Sequence != next[subject] || v.Hashes[0] != env.Sequence || v.Note != want || env.InstanceID != rt.ID() {
			t.Fatalf("libzmq got %s %+v %+v, want sequence %d", subject, env, v, next[subject])
		}
		next[subject]++
	}
	if next["namespace.interop.component.go.kv_events"] != n || next["namespace.interop.component.go.load_metrics"] != n {
		t.Fatalf("per subject: %v", next)
	}
}

func TestLoomSubscriberReceivesFromLibzmqPublisher(t *testing.T) {
	s := newSystem(t, "zmq")
	rt := s.runtime()
	const n = 50
	py := startPy(t, "pub", fmt.Sprint(n))
	ep := py.line("endpoint")
	// A foreign publisher joins by registering its channel as Loom's do.
	rec := discovery.Instance{Namespace: "interop", Component: events.ChannelComponent, Endpoint: "kv_events", ID: 77,
		Transport: "zmq", Address: ep, Codec: "json",
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
		if ev.Sequence != uint64(i) || ev.PublisherID != 77 || ev.Value.Hashes[0] != uint64(i) || ev.Value.Note != "libzmq" || ev.Codec != "json" {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
	if st := sub.Stats(); st.Lost != 0 || st.Malformed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLibzmqPeersThroughLoomBroker(t *testing.T) {
	s := newSystem(t, "zmq-broker")
	rt := s.runtime()
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
