package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom/events"
)

type pubOptions struct {
	count       int
	interval    time.Duration
	codec       string
	transport   string
	subscribers int
	timeout     time.Duration
	json        bool
}

// published is a line of loom pub --json: the fields of loom sub --json
// that name the event.
type published struct {
	Subject     string `json:"subject"`
	PublisherID uint64 `json:"publisher_id"`
	Sequence    uint64 `json:"sequence"`
}

func newPub() *cobra.Command {
	o := pubOptions{count: 1, timeout: 10 * time.Second}
	cmd := &cobra.Command{
		Use:   "pub namespace[/component[/endpoint]] topic ['<json event>' | -]",
		Short: "Publish events on the event plane",
		Long: `Publish an event on topic in a scope (a namespace, a component or an
endpoint), on the transport events.transport names (see loom config). The
event is JSON, encoded with events.codec; with - or no event, each line of
standard input is one event. Each published event is printed with its
subject, publisher id and sequence number; with --json, as a line of JSON
with the names loom sub --json uses.

A ZeroMQ publisher only reaches subscribers already connected to it: use
--wait-subscribers to wait for them first.`,
		Example: `  loom pub dynamo/backend kv_events '{"stored": [1, 2, 3]}'
  loom pub dynamo load_metrics '{"active": 3}' --count 10 --interval 100ms
  tail -f metrics.jsonl | loom pub dynamo/backend load_metrics -`,
		Args: cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.validate(); err != nil {
				return &usageError{cmd, err}
			}
			// Names are checked before connecting: a typo must not wait
			// for discovery or NATS first.
			scope, err := events.ParseScope(args[0])
			if err != nil {
				return &usageError{cmd, err}
			}
			if scope.Wild() {
				return &usageError{cmd, fmt.Errorf("events: a publisher's scope cannot hold the wildcard %q (in %q); name each part", events.Any, args[0])}
			}
			if err := events.ValidateTopic(args[1]); err != nil {
				return &usageError{cmd, err}
			}
			if o.subscribers > 0 {
				tr, source, err := eventsTransport(o.transport)
				if err != nil {
					return err
				}
				if tr != "zmq" {
					return &usageError{cmd, fmt.Errorf("--wait-subscribers: only a ZeroMQ publisher knows its subscribers, and this is %s (%s); leave it out, or use --transport zmq", tr, source)}
				}
			}
			ctx, stop := signalContext(context.Background(), cmd.ErrOrStderr())
			defer stop()
			var in io.Reader
			var event any
			if len(args) == 3 && args[2] != "-" {
				if event, err = parseJSONArg("the event", args[2]); err != nil {
					return err
				}
			} else {
				in = cmd.InOrStdin()
			}
			return publish(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), scope, args[1], event, in, o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.count, "count", o.count, "publish the event this many times")
	f.DurationVar(&o.interval, "interval", 0, "pause between events")
	f.StringVar(&o.codec, "codec", "", "msgpack or json (default events.codec)")
	f.StringVar(&o.transport, "transport", "", "nats, zmq or jetstream (default events.transport)")
	f.IntVar(&o.subscribers, "wait-subscribers", 0, "ZeroMQ: wait until this many subscribers are connected")
	f.BoolVar(&o.json, "json", false, "print each published event as a line of JSON")
	f.DurationVar(&o.timeout, "timeout", o.timeout, "give up waiting for subscribers, or for the events to leave, after this long")
	return cmd
}

// validate refuses flag values that would publish nothing or give up at
// once.
func (o pubOptions) validate() error {
	switch {
	case o.count < 1:
		return fmt.Errorf("--count %d: want 1 or more", o.count)
	case o.interval < 0:
		return fmt.Errorf("--interval %s: want 0 or more", o.interval)
	case o.subscribers < 0:
		return fmt.Errorf("--wait-subscribers %d: want 0 or more", o.subscribers)
	case o.timeout <= 0:
		return fmt.Errorf("--timeout %s: want more than 0", o.timeout)
	}
	return nil
}

func publish(ctx context.Context, out, errOut io.Writer, scope events.Scope, topic string, event any, in io.Reader, o pubOptions) error {
	rt, err := toolRuntime(ctx)
	if err != nil {
		return err
	}
	defer rt.Shutdown(context.Background())
	var opts []events.Option
	if o.codec != "" {
		opts = append(opts, events.WithCodec(o.codec))
	}
	if o.transport != "" {
		opts = append(opts, events.WithTransport(o.transport))
	}
	p, err := events.NewPublisher[any](ctx, rt, scope, topic, opts...)
	if err != nil {
		return err
	}
	defer p.Shutdown(context.Background())
	warnLocalDiscovery(errOut, "loom pub", rt, p.Transport())
	if o.subscribers > 0 {
		wctx, cancel := context.WithTimeout(ctx, o.timeout)
		err := p.WaitForSubscribers(wctx, o.subscribers)
		cancel()
		if err != nil {
			return fmt.Errorf("waiting for %d subscribers (--wait-subscribers): %w", o.subscribers, err)
		}
	}
	seq, unheard := uint64(0), 0
	send := func(v any) error {
		if n, err := p.Subscribers(); err == nil && n == 0 {
			unheard++
		}
		if err := p.Publish(ctx, v); err != nil {
			return err
		}
		var err error
		if o.json {
			err = printJSONLine(out, published{Subject: p.Subject(), PublisherID: p.ID(), Sequence: seq})
		} else {
			_, err = fmt.Fprintf(out, "published %s publisher=%x sequence=%d\n", p.Subject(), p.ID(), seq)
		}
		seq++
		return err
	}
	if in == nil {
		for i := range o.count {
			if i > 0 && o.interval > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(o.interval):
				}
			}
			if err := send(event); err != nil {
				return err
			}
		}
	} else if err := publishLines(ctx, in, rt.Config().Events.MaxEventSize, o.interval, send); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.timeout)
	defer cancel()
	if err := p.Flush(sctx); err != nil {
		return err
	}
	if unheard > 0 {
		fmt.Fprintf(errOut, "loom pub: %d of %d events went out while no subscriber was connected: they reached no one (ZeroMQ delivers only to connected subscribers; see --wait-subscribers)\n", unheard, seq)
	}
	return nil
}

// publishLines sends each non-empty line of in as a JSON event until in
// ends or ctx does. A read from a terminal or an open pipe blocks until a
// line comes, so it runs in a goroutine of its own that an interrupted
// loom pub does not wait for: the process is about to exit.
func publishLines(ctx context.Context, in io.Reader, maxLine int, interval time.Duration, send func(any) error) error {
	type line struct {
		text string
		err  error // the scanner's, after the last line
	}
	lines := make(chan line)
	go func() {
		defer close(lines)
		s := bufio.NewScanner(in)
		s.Buffer(make([]byte, 64<<10), maxLine)
		for s.Scan() {
			select {
			case lines <- line{text: s.Text()}:
			case <-ctx.Done():
				return
			}
		}
		if err := s.Err(); err != nil {
			select {
			case lines <- line{err: err}:
			case <-ctx.Done():
			}
		}
	}()
	for n := 1; ; n++ {
		var l line
		select {
		case <-ctx.Done():
			return nil
		case got, ok := <-lines:
			if !ok {
				return nil
			}
			l = got
		}
		if l.err != nil {
			return fmt.Errorf("reading standard input: %w", l.err)
		}
		text := strings.TrimSpace(l.text)
		if text == "" {
			continue
		}
		v, err := parseJSONArg("the event", text)
		if err != nil {
			return fmt.Errorf("standard input line %d: %w", n, err)
		}
		if err := send(v); err != nil {
			return err
		}
		if interval > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(interval):
			}
		}
	}
}
