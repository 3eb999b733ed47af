package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// zeroRefused lists the keys whose 0 what reads them would take for
// something else than the description says (mostly its built-in default),
// with the part of the error that says what to write instead.
var zeroRefused = []struct {
	key   string
	wants string
}{
	{"nats.connect_timeout", "0 would leave no time to connect; write a positive duration"},
	{"nats.reconnect_wait", "not as no pause; write a positive pause"},
	{"nats.reconnect_buffer_size", "not as no buffer; write -1 to buffer nothing"},
	{"discovery.dial_timeout", "0 would leave no time to reach the store; write a positive duration"},
	{"request_plane.queue_size", "not as no queue; write -1 for no queue"},
	{"request_plane.max_conns", "0 would hold no connection; write -1 for no limit"},
	{"request_plane.frame_timeout", "not as no bound; write a negative duration such as -1s for no bound"},
	{"request_plane.idle_timeout", "not as never; write a negative duration such as -1s for never"},
	{"request_plane.keepalive_interval", "write a negative duration such as -1s to disable keepalive"},
	{"request_plane.stall_timeout", "not as off; write a negative duration such as -1s for off"},
	{"shutdown.timeout", "0 would exit at once with code 911, as a shutdown that did not finish, even when main returns by itself; write a positive limit"},
	{"queue.max_msgs", "not as a queue that holds nothing; write -1 for no limit"},
	{"queue.max_bytes", "not as a queue that holds nothing; write -1 for no limit"},
	{"queue.backoff_initial", "not as no delay; write a positive delay"},
	{"queue.backoff_max", "not as no delay; write a positive delay"},
	{"events.zmq.max_peers", "0 would hold no connection; write -1 for no limit"},
	{"events.jetstream.max_bytes", "not as a stream that holds nothing; write -1 for no limit"},
	{"events.jetstream.max_msgs", "not as a stream that holds nothing; write -1 for no limit"},
}

// TestZeroThatWouldBeReadAsSomethingElseIsRefused sets each key of
// zeroRefused to 0, from the environment and from a file: Load must refuse
// it with an error naming the key, the value, its source and what to
// write instead, rather than hand on a 0 that the component replaces.
func TestZeroThatWouldBeReadAsSomethingElseIsRefused(t *testing.T) {
	byName := map[string]Key{}
	for _, k := range Keys() {
		byName[k.Name] = k
	}
	for _, tt := range zeroRefused {
		k, ok := byName[tt.key]
		if !ok {
			t.Fatalf("no key %s", tt.key)
		}
		zero := "0"
		if k.Type == "duration" {
			zero = "0s"
		}
		t.Run(tt.key+" from env", func(t *testing.T) {
			l, _, err := layers{env: map[string]string{k.Env[0]: zero}}.load(t)
			if err == nil {
				t.Fatalf("%s = %s was accepted (%s)", tt.key, zero, l.Table())
			}
			want := `config: ` + tt.key + ` = "` + zero + `" (from env ` + k.Env[0] + `): `
			for _, w := range []string{want, tt.wants} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n\t%v\ndoes not contain\n\t%s", err, w)
				}
			}
		})
		t.Run(tt.key+" from a file", func(t *testing.T) {
			table, leaf := tt.key[:strings.LastIndexByte(tt.key, '.')], tt.key[strings.LastIndexByte(tt.key, '.')+1:]
			_, root, err := layers{etcDir: "[" + table + "]\n" + leaf + " = 0\n"}.load(t)
			if err == nil {
				t.Fatalf("%s = 0 in a file was accepted", tt.key)
			}
			want := `config: ` + tt.key + ` = "0" (from ` + filepath.Join(root, "etc", "50-a.toml") + `): `
			for _, w := range []string{want, tt.wants} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n\t%v\ndoes not contain\n\t%s", err, w)
				}
			}
		})
	}
	t.Run("every key that refuses 0 is listed", func(t *testing.T) {
		listed := map[string]bool{}
		for _, tt := range zeroRefused {
			listed[tt.key] = true
		}
		for _, k := range Keys() {
			if k.NonZero != "" && !listed[k.Name] {
				t.Errorf("%s refuses 0 (%s) and is not in zeroRefused", k.Name, k.NonZero)
			}
		}
	})
}

// TestNonZeroKeysTakeTheirOtherValues checks that refusing 0 refuses
// nothing else: the values the descriptions offer instead load.
func TestNonZeroKeysTakeTheirOtherValues(t *testing.T) {
	l, _, err := layers{env: map[string]string{
		"LOOM_REQUEST_PLANE_QUEUE_SIZE":         "-1",
		"LOOM_REQUEST_PLANE_MAX_CONNS":          "1",
		"LOOM_REQUEST_PLANE_FRAME_TIMEOUT":      "-1s",
		"LOOM_REQUEST_PLANE_IDLE_TIMEOUT":       "-1ns",
		"LOOM_REQUEST_PLANE_KEEPALIVE_INTERVAL": "-1s",
		"LOOM_REQUEST_PLANE_STALL_TIMEOUT":      "30ms",
		"LOOM_NATS_RECONNECT_BUFFER_SIZE":       "-1",
		"LOOM_NATS_RECONNECT_WAIT":              "1ms",
		"LOOM_QUEUE_MAX_MSGS":                   "1",
		"LOOM_QUEUE_BACKOFF_INITIAL":            "1ns",
		"LOOM_EVENTS_ZMQ_MAX_PEERS":             "-1",
		"LOOM_EVENTS_JETSTREAM_MAX_BYTES":       "-1",
	}}.load(t)
	if err != nil {
		t.Fatal(err)
	}
	rp := l.Config.RequestPlane
	if rp.QueueSize != -1 || rp.MaxConns != 1 || rp.FrameTimeout != -time.Second || rp.IdleTimeout != -1 ||
		rp.KeepaliveInterval != -time.Second || rp.StallTimeout != 30*time.Millisecond {
		t.Errorf("request_plane = %+v", rp)
	}
	if n := l.Config.NATS; n.ReconnectBufferSize != -1 || n.ReconnectWait != time.Millisecond {
		t.Errorf("nats = %+v", n)
	}
	if q := l.Config.Queue; q.MaxMsgs != 1 || q.BackoffInitial != 1 {
		t.Errorf("queue = %+v", q)
	}
	if e := l.Config.Events; e.ZMQ.MaxPeers != -1 || e.JetStream.MaxBytes != -1 {
		t.Errorf("events = %+v", e)
	}
}

func TestValidateRefusesZeroWhereItWouldBeReadAsSomethingElse(t *testing.T) {
	c := Default()
	c.RequestPlane.MaxConns = 0
	c.RequestPlane.StallTimeout = 0
	err := c.Validate()
	for _, want := range []string{
		`config: request_plane.max_conns = "0": 0 would hold no connection; write -1 for no limit or a positive count`,
		`config: request_plane.stall_timeout = "0s": 0 is read as unset, 400ms, not as off`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want an error containing %s", err, want)
		}
	}
}
