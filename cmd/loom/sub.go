package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/events"
)

type subOptions struct {
	count          int
	timeout        time.Duration
	asJSON         bool
	transport      string
	all            bool
	fromSeq        uint64
	since          string
	lastPerSubject bool
	durable        string
}

func newSub() *cobra.Command {
	var o subOptions
	cmd := &cobra.Command{
		Use:   "sub namespace[/component[/endpoint]] topic",
		Short: "Print the events of a scope and topic as they arrive",
		Long: `Subscribe to the events of topic in a scope and print each on one line:
its subject, publisher id, sequence number and payload as JSON (with --json,
a JSON object per line). Scope parts may be * (any name); topic may be *
(any topic) or > (every event at or below the scope). Losses are reported
on standard error as they are detected; a summary follows at the end.

With the jetstream transport, --all, --from-seq, --since and
--last-per-subject replay stored events, and --durable names a consumer
that resumes where it left off (give it the same start flag each time: a
durable keeps the start it was created with).`,
		Example: `  loom sub 'dynamo/*' kv_events      # every component's kv_events
  loom sub dynamo '>' --json           # everything in namespace dynamo
  loom sub dynamo/backend load_metrics --transport jetstream --since 10m`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.count < 0 {
				return &usageError{cmd, fmt.Errorf("--count %d: want 0 or more", o.count)}
			}
			if o.timeout < 0 {
				return &usageError{cmd, fmt.Errorf("--timeout %s: want 0 or more", o.timeout)}
			}
			// Names are checked before connecting: a typo must not wait
			// for discovery or NATS first.
			scope, err := events.ParseScope(args[0])
			if err != nil {
				return &usageError{cmd, err}
			}
			if _, err := events.Subject(scope, args[1]); err != nil {
				return &usageError{cmd, err}
			}
			if _, err := o.events(); err != nil {
				return &usageError{cmd, err}
			}
			if f := o.jetstreamFlag(); f != "" {
				tr, source, err := eventsTransport(o.transport)
				if err != nil {
					return err
				}
				if tr != "jetstream" {
					return &usageError{cmd, fmt.Errorf("%s: only the jetstream transport keeps events to replay or resume, and this is %s (%s); use --transport jetstream, or set LOOM_EVENTS_TRANSPORT=jetstream", f, tr, source)}
				}
			}
			ctx, stop := signalContext(context.Background(), cmd.ErrOrStderr())
			defer stop()
			if o.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, o.timeout)
				defer cancel()
			}
			return subscribe(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), scope, args[1], o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.count, "count", 0, "exit after this many events (0: until Ctrl-C)")
	f.DurationVar(&o.timeout, "timeout", 0, "exit after this long (0: until Ctrl-C)")
	f.BoolVar(&o.asJSON, "json", false, "print each event as a JSON object")
	f.StringVar(&o.transport, "transport", "", "nats, zmq or jetstream (default events.transport)")
	f.BoolVar(&o.all, "all", false, "jetstream: start with the oldest stored event")
	f.Uint64Var(&o.fromSeq, "from-seq", 0, "jetstream: start at this stream sequence")
	f.StringVar(&o.since, "since", "", "jetstream: start with events stored since this duration ago (10m) or time (RFC 3339)")
	f.BoolVar(&o.lastPerSubject, "last-per-subject", false, "jetstream: start with the last event of each subject")
	f.StringVar(&o.durable, "durable", "", "jetstream: name of a durable consumer to create or resume")
	return cmd
}

func (o subOptions) events() ([]events.Option, error) {
	opts := []events.Option{events.WithLossErrors()}
	if o.transport != "" {
		opts = append(opts, events.WithTransport(o.transport))
	}
	starts := 0
	if o.all {
		opts = append(opts, events.DeliverAll())
		starts++
	}
	if o.fromSeq > 0 {
		opts = append(opts, events.DeliverFrom(o.fromSeq))
		starts++
	}
	if o.since != "" {
		t, err := parseSince(o.since, time.Now())
		if err != nil {
			return nil, err
		}
		opts = append(opts, events.DeliverSince(t))
		starts++
	}
	if o.lastPerSubject {
		opts = append(opts, events.DeliverLastPerSubject())
		starts++
	}
	if starts > 1 {
		return nil, fmt.Errorf("--all, --from-seq, --since and --last-per-subject choose where to start: give one")
	}
	if o.durable != "" {
		opts = append(opts, events.Durable(o.durable))
	}
	return opts, nil
}

// eventsTransport returns the transport that loom pub or sub runs on, flag
// (--transport) or else events.transport, and where it came from.
func eventsTransport(flag string) (tr, source string, err error) {
	if flag != "" {
		return flag, "--transport", nil
	}
	l, err := config.Load()
	if err != nil {
		return "", "", err
	}
	return l.Config.Events.Transport, "events.transport, from " + l.Source("events.transport"), nil
}

// jetstreamFlag returns the first flag given that only the jetstream
// transport serves, or "".
func (o subOptions) jetstreamFlag() string {
	for _, f := range []struct {
		name string
		set  bool
	}{{"--all", o.all}, {"--from-seq", o.fromSeq > 0}, {"--since", o.since != ""}, {"--last-per-subject", o.lastPerSubject}, {"--durable", o.durable != ""}} {
		if f.set {
			return f.name
		}
	}
	return ""
}

func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want a duration like 10m or a time like 2026-01-02T15:04:05Z", s)
	}
	return t, nil
}

// subEvent is what `loom sub --json` prints for each event.
type subEvent struct {
	Subject     string `json:"subject"`
	Scope       string `json:"scope"`
	Topic       string `json:"topic"`
	PublisherID uint64 `json:"publisher_id"`
	InstanceID  uint64 `json:"instance_id,omitempty"`
	Sequence    uint64 `json:"sequence"`
	PublishedAt string `json:"published_at"`
	Codec       string `json:"codec"`
	StreamSeq   uint64 `json:"stream_sequence,omitempty"`
	Payload     any    `json:"payload"`
}

func subscribe(ctx context.Context, out, errOut io.Writer, scope events.Scope, topic string, o subOptions) error {
	opts, err := o.events()
	if err != nil {
		return err
	}
	rt, err := toolRuntime(ctx)
	if err != nil {
		return err
	}
	defer rt.Shutdown(context.Background())
	sub, err := events.SubscribeRaw(ctx, rt, scope, topic, opts...)
	if err != nil {
		return err
	}
	defer sub.Close()
	fmt.Fprintf(errOut, "loom sub: subscribed to %s over %s\n", sub.Pattern(), sub.Transport())
	warnLocalDiscovery(errOut, "loom sub", rt, sub.Transport())
	enc := json.NewEncoder(out)
	n := 0
	for ev, err := range sub.Events(ctx) {
		if le := (*events.LossError)(nil); errors.As(err, &le) {
			fmt.Fprintf(errOut, "loom sub: %v\n", le)
			continue
		}
		if err != nil {
			return err
		}
		payload := decodePayload(ev.Codec, ev.Payload)
		if o.asJSON {
			err = enc.Encode(subEvent{
				Subject: ev.Subject, Scope: ev.Scope().String(), Topic: ev.Topic,
				PublisherID: ev.PublisherID, InstanceID: ev.InstanceID, Sequence: ev.Sequence,
				PublishedAt: ev.PublishedAt.UTC().Format(time.RFC3339Nano), Codec: ev.Codec,
				StreamSeq: ev.StreamSequence, Payload: payload,
			})
		} else {
			var b []byte
			if b, err = json.Marshal(payload); err == nil {
				_, err = fmt.Fprintf(out, "%s publisher=%x sequence=%d %s\n", ev.Subject, ev.PublisherID, ev.Sequence, b)
			}
		}
		if err != nil {
			return fmt.Errorf("print event: %w", err)
		}
		if n++; o.count > 0 && n >= o.count {
			break
		}
	}
	st := sub.Stats()
	noun := "events"
	if st.Delivered == 1 {
		noun = "event"
	}
	fmt.Fprintf(errOut, "loom sub: %d %s; lost %d, dropped %d, reordered %d, duplicates %d, malformed %d\n",
		st.Delivered, noun, st.Lost, st.Dropped, st.Reordered, st.Duplicates, st.Malformed)
	return nil
}

// decodePayload turns a payload into a value JSON can print; one that does
// not decode is shown as its bytes (base64).
func decodePayload(name string, payload []byte) any {
	if name == codec.JSONName {
		return json.RawMessage(payload)
	}
	var v any
	if err := codec.MsgPack.Unmarshal(payload, &v); err != nil {
		return payload
	}
	return codec.JSONValue(v)
}

// warnLocalDiscovery says when ZeroMQ direct cannot reach other processes:
// its publishers are found through discovery, and memory discovery is this
// process's alone.
func warnLocalDiscovery(errOut io.Writer, who string, rt *loom.Runtime, transport string) {
	if transport == events.ZMQ && rt.Config().Events.ZMQ.BrokerSub == "" && memoryDiscovery(rt) {
		fmt.Fprintf(errOut, "%s: ZeroMQ direct finds publishers through discovery, and discovery.backend is memory (this process only): set LOOM_DISCOVERY=etcd or natskv, or use a broker (loom up --zmq-broker)\n", who)
	}
}
