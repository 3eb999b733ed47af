package events_test

import (
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/events"
	"github.com/loomrt/loom/internal/testutil"
)

// closedAtOnce dials a ZeroMQ endpoint and reports whether the socket
// closes the connection without sending its greeting.
func closedAtOnce(t *testing.T, ep string) bool {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(ep, "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s neither greeted nor closed a connection within 10s", ep)
	}
	return n == 0 && err != nil
}

// events.zmq.max_peers reaches a direct publisher's socket: beyond it a
// connection is closed at once, and the subscribers it holds still get
// every event.
func TestZMQMaxPeersBoundsAPublishersConnections(t *testing.T) {
	s := newSystem(t, "zmq")
	s.Config.Events.ZMQ.MaxPeers = 2
	var logs testutil.SyncBuffer
	pubRT := s.Runtime(loom.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	scope := events.Scope{Namespace: "peers", Component: "worker"}
	p := publisher[string](t, pubRT, scope, "kv_events")
	subs := []*events.Subscription[string]{
		subscribe[string](t, s.Runtime(), scope, "kv_events"),
		subscribe[string](t, s.Runtime(), scope, "kv_events"),
	}
	waitSubscribed(t, p, 2)
	recs, err := pubRT.Discovery().List(t.Context(), discovery.Query{Namespace: "peers", Component: events.ChannelComponent})
	if err != nil || len(recs) != 1 {
		t.Fatalf("event channel records %+v %v", recs, err)
	}
	if !closedAtOnce(t, recs[0].Address) {
		t.Fatal("a third connection to a publisher with events.zmq.max_peers 2 was not closed")
	}
	if n := p.Stats().PeersRefused; n != 1 {
		t.Errorf("Stats().PeersRefused = %d, want 1", n)
	}
	if !strings.Contains(logs.String(), `msg="zmtp: peer refused: the socket holds its maximum of peers (events.zmq.max_peers)"`) {
		t.Errorf("the refusal is not logged naming events.zmq.max_peers:\n%s", logs.String())
	}
	if n := testutil.Metric(t, pubRT.Metrics().Registry(), "loom_events_peers_refused_total", "transport", "zmq"); n != 1 {
		t.Errorf("loom_events_peers_refused_total = %v, want 1", n)
	}
	if err := p.Publish(t.Context(), "still here"); err != nil {
		t.Fatal(err)
	}
	for i, sub := range subs {
		if evs := collect(t, sub, 1, 5*time.Second); len(evs) != 1 || evs[0].Value != "still here" {
			t.Fatalf("subscriber %d got %v", i, evs)
		}
	}
}

// A broker's MaxPeers bounds each of its sides; the refusals are logged
// naming the setting the broker was given, BrokerConfig.MaxPeers unless
// it names another (loom up's flag), not a publisher's
// events.zmq.max_peers.
func TestBrokerMaxPeersBoundsEachSide(t *testing.T) {
	for _, tc := range []struct{ setting, want string }{
		{"", "(BrokerConfig.MaxPeers)"},
		{"--zmq-broker-max-peers", "(--zmq-broker-max-peers)"},
	} {
		t.Run("set by "+tc.want, func(t *testing.T) {
			var logs testutil.SyncBuffer
			b, err := events.StartBroker(events.BrokerConfig{PubEndpoint: "tcp://127.0.0.1:0", SubEndpoint: "tcp://127.0.0.1:0", MaxPeers: 1,
				MaxPeersSetting: tc.setting, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			for _, ep := range []string{b.PubEndpoint(), b.SubEndpoint()} {
				held, err := net.Dial("tcp", strings.TrimPrefix(ep, "tcp://"))
				if err != nil {
					t.Fatal(err)
				}
				defer held.Close()
				// The broker greets the first: it holds it.
				_ = held.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := held.Read(make([]byte, 1)); err != nil {
					t.Fatalf("%s: no greeting for the first connection: %v", ep, err)
				}
				if !closedAtOnce(t, ep) {
					t.Fatalf("%s: a second connection with MaxPeers 1 was not closed", ep)
				}
			}
			if n := b.Stats().Refused; n != 2 {
				t.Fatalf("Stats().Refused = %d after one refusal on each side, want 2", n)
			}
			// Each side logged its refusal before closing the connection.
			want := `msg="zmtp: peer refused: the socket holds its maximum of peers ` + tc.want + `"`
			if n := strings.Count(logs.String(), want); n != 2 {
				t.Fatalf("the broker logged %d refusals naming %s, want one a side:\n%s", n, tc.want, logs.String())
			}
		})
	}
}
