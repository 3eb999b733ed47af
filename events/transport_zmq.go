package events

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/internal/zmtp"
)

// ZeroMQ: each message has two frames, the subject (ZeroMQ subscriptions
// match its prefix) and the envelope in a 5-byte frame (FrameVersion and
// length). In direct mode each publisher binds a PUB socket and registers
// it in discovery as an instance of the reserved component ChannelComponent
// (endpoint: the topic); subscribers watch discovery and keep a connection
// to every publisher whose subject matches. Through a broker, publishers
// connect to its XSUB side and subscribers to its XPUB side.

// ChannelComponent is the reserved component name under which ZeroMQ
// publishers register their event channels in discovery:
// v1/instances/{namespace}/_events/{topic}/{publisher id}. Do not name a
// component of your own so.
const ChannelComponent = "_events"

// Metadata keys of an event-channel record.
const (
	metaSubject  = "subject"
	metaScope    = "scope"
	metaInstance = "instance_id"
)

// zmqSubscriptionLimit bounds what a publisher reads from a subscriber
// (subscriptions only).
const zmqSubscriptionLimit = 64 << 10

type zmqSender struct {
	rt         *loom.Runtime
	c          *pubCore
	sock       *zmtp.Socket
	link       *zmtp.Link
	inst       *discovery.Instance
	dropped    *atomic.Uint64
	subject    []byte
	frame      []byte
	registered bool
}

func newZMQSender(ctx context.Context, rt *loom.Runtime, c *pubCore, o options) (*zmqSender, error) {
	zc := o.cfg.ZMQ
	s := &zmqSender{
		rt:      rt,
		c:       c,
		subject: []byte(c.subject),
		dropped: &c.dropped,
		sock: zmtp.NewSocket(zmtp.Options{Type: zmtp.PUB, SendQueue: zc.SendQueue,
			MaxMessage: zmqSubscriptionLimit, MaxPeers: zc.MaxPeers, MaxPeersSetting: "events.zmq.max_peers", Logger: rt.Logger()}),
	}
	if zc.BrokerPub != "" {
		link, err := s.sock.Dial(zc.BrokerPub)
		if err != nil {
			s.sock.Close()
			return nil, fmt.Errorf("events: events.zmq.broker_pub: %w", err)
		}
		s.link = link
		return s, nil
	}
	host := zc.Host
	if host == "" {
		host = "127.0.0.1"
	}
	addr, err := s.sock.Listen("tcp://" + net.JoinHostPort(host, "0"))
	if err != nil {
		s.sock.Close()
		return nil, fmt.Errorf("events: publisher on %s: %w (check events.zmq.host)", c.subject, err)
	}
	adv := zc.Advertise
	if adv == "" {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			s.sock.Close()
			return nil, fmt.Errorf("events: events.zmq.host is %s: set events.zmq.advertise to the host subscribers should dial", host)
		}
		adv = host
	}
	port := addr.(*net.TCPAddr).Port
	s.inst = &discovery.Instance{
		Namespace: c.scope.Namespace,
		Component: ChannelComponent,
		Endpoint:  c.topic,
		ID:        c.id,
		Transport: ZMQ,
		Address:   "tcp://" + net.JoinHostPort(adv, strconv.Itoa(port)),
		Codec:     c.codec,
		Metadata: map[string]string{
			metaSubject:  c.subject,
			metaScope:    c.scope.String(),
			metaInstance: strconv.FormatUint(c.instance, 16),
		},
	}
	if err := rt.Discovery().Register(ctx, *s.inst); err != nil {
		s.sock.Close()
		return nil, fmt.Errorf("events: register event channel %s: %w", s.inst.Key(), err)
	}
	s.registered = true
	return s, nil
}

// send writes Dynamo's 4-part message [subject, publisher_id, sequence,
// frame]; it runs under the publisher's lock, so c.seq is this event's.
func (s *zmqSender) send(_ context.Context, _ string, env []byte) error {
	s.frame = AppendFrame(s.frame[:0], env)
	var id, seq [8]byte
	binary.BigEndian.PutUint64(id[:], s.c.id)
	binary.BigEndian.PutUint64(seq[:], s.c.seq)
	wire := zmtp.AppendMessage(make([]byte, 0, zmtp.MessageSize(s.subject, id[:], seq[:], s.frame)), s.subject, id[:], seq[:], s.frame)
	if _, dropped := s.sock.Send(s.subject, wire); dropped > 0 {
		s.dropped.Add(uint64(dropped))
	}
	if cap(s.frame) > 256<<10 {
		s.frame = nil
	}
	return nil
}

func (s *zmqSender) subscribers(subject string) (int, error) {
	return s.sock.Subscribers([]byte(subject)), nil
}

func (s *zmqSender) flush(ctx context.Context) error {
	if err := s.sock.Drain(ctx); err != nil {
		return fmt.Errorf("events not all written to subscribers: %w", err)
	}
	return nil
}

func (s *zmqSender) shutdown(ctx context.Context, drain bool) error {
	var errDrain error
	if drain {
		errDrain = s.sock.Drain(ctx)
	}
	var errUnreg error
	if s.registered {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		errUnreg = s.rt.Discovery().Unregister(uctx, *s.inst)
		cancel()
		if errors.Is(errUnreg, discovery.ErrClosed) {
			errUnreg = nil
		}
	}
	s.sock.Close()
	if errDrain != nil {
		errDrain = fmt.Errorf("events not all written to subscribers: %w", errDrain)
	}
	return errors.Join(errDrain, errUnreg)
}

// zmqSource is a subscription's SUB socket and, in direct mode, the watch
// that keeps it connected to the matching publishers.
type zmqSource struct {
	c       *subCore
	sock    *zmtp.Socket
	cancel  context.CancelFunc
	watched chan struct{}

	mu    sync.Mutex
	links map[string]*zmtp.Link // by record key
}

// frameOverhead is what a message adds to its envelope: the subject frame
// and the headers.
const frameOverhead = 1024

func subscribeZMQ(ctx context.Context, rt *loom.Runtime, c *subCore, o options) (*zmqSource, error) {
	s := &zmqSource{c: c, links: make(map[string]*zmtp.Link), watched: make(chan struct{})}
	s.sock = zmtp.NewSocket(zmtp.Options{
		Type:       zmtp.SUB,
		MaxMessage: c.maxSize + FrameHeaderSize + frameOverhead,
		Logger:     rt.Logger(),
		OnMessage:  s.onMessage,
	})
	s.sock.Subscribe([]byte(literalPrefix(c.pattern)))
	if b := o.cfg.ZMQ.BrokerSub; b != "" {
		close(s.watched)
		link, err := s.sock.Dial(b)
		if err != nil {
			s.sock.Close()
			return nil, fmt.Errorf("events: events.zmq.broker_sub: %w", err)
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if !waitLinks(wctx, []*zmtp.Link{link}) {
			s.sock.Close()
			return nil, fmt.Errorf("events: subscribe to %s: the broker at %s did not answer within 5s (events.zmq.broker_sub; is `loom up --zmq-broker` running?)", c.pattern, b)
		}
		return s, nil
	}
	q := discovery.Query{}
	if ns := strings.SplitN(c.pattern, ".", 3)[1]; ns != Any {
		q.Namespace = strings.ReplaceAll(ns, nsDot, ".")
	}
	wctx, cancel := context.WithCancel(context.Background())
	ch, err := rt.Discovery().Watch(wctx, q)
	if err != nil {
		cancel()
		s.sock.Close()
		return nil, fmt.Errorf("events: subscribe to %s: watch discovery for event channels: %w", c.pattern, err)
	}
	s.cancel = cancel
	fail := func(err error) (*zmqSource, error) {
		cancel()
		s.sock.Close()
		return nil, err
	}
	// The snapshot first, so that Subscribe returns connected to the
	// publishers that exist now.
	var first []*zmtp.Link
	for synced := false; !synced; {
		var ev discovery.Event
		var ok bool
		select {
		case ev, ok = <-ch:
		case <-ctx.Done():
			return fail(fmt.Errorf("events: subscribe to %s: waiting for discovery: %w", c.pattern, ctx.Err()))
		}
		if !ok {
			return fail(fmt.Errorf("events: subscribe to %s: the discovery watch ended before its snapshot", c.pattern))
		}
		if ev.Kind == discovery.Synced {
			synced = true
			continue
		}
		if l := s.apply(ev); l != nil {
			first = append(first, l)
		}
	}
	lctx, lcancel := context.WithTimeout(ctx, 2*time.Second)
	waitLinks(lctx, first)
	lcancel()
	go func() {
		defer close(s.watched)
		for ev := range ch {
			s.apply(ev)
		}
	}()
	return s, nil
}

// waitLinks waits until every link is connected or ctx ends.
func waitLinks(ctx context.Context, links []*zmtp.Link) bool {
	for {
		all := true
		for _, l := range links {
			all = all && l.Connected()
		}
		if all {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// apply follows one discovery change: dial a matching publisher that
// appeared, hang up on one that went away. It returns a new link.
func (s *zmqSource) apply(ev discovery.Event) *zmtp.Link {
	inst := ev.Instance
	if inst.Component != ChannelComponent || inst.Transport != ZMQ || !matchSubject(s.c.pattern, inst.Metadata[metaSubject]) {
		return nil
	}
	key := inst.Key()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch ev.Kind {
	case discovery.Added:
		if old := s.links[key]; old != nil {
			if old.Endpoint() == inst.Address {
				return nil
			}
			old.Close()
		}
		l, err := s.sock.Dial(inst.Address)
		if err != nil {
			s.c.log.Warn("events: cannot dial event publisher", "address", inst.Address, "record", key, "err", err)
			return nil
		}
		s.links[key] = l
		return l
	case discovery.Removed:
		if l := s.links[key]; l != nil {
			delete(s.links, key)
			l.Close()
		}
		s.c.track.forget(inst.ID)
	}
	return nil
}

func (s *zmqSource) onMessage(_ *zmtp.Peer, parts [][]byte) {
	subject, frame, err := splitZMQMessage(parts)
	if err != nil {
		s.c.malformedMsg(subject, err)
		return
	}
	if !matchSubject(s.c.pattern, subject) {
		return // under the subscribed prefix, but not the pattern
	}
	payload, rest, err := ParseFrame(frame, s.c.maxSize)
	if err == nil && len(rest) != 0 {
		err = fmt.Errorf("%w: %d bytes after the frame", ErrFrame, len(rest))
	}
	if err != nil {
		s.c.malformedMsg(subject, err)
		return
	}
	s.c.receive(subject, nil, append([]byte(nil), payload...))
}

func (s *zmqSource) close() error {
	if s.cancel != nil {
		s.cancel()
	}
	<-s.watched
	return s.sock.Close()
}

// splitZMQMessage returns the subject and the framed envelope of a ZeroMQ
// event message: Dynamo's 4 parts [subject, publisher_id (u64 BE),
// sequence (u64 BE), frame], or the 2 parts [subject, frame] Loom sent
// before it wrote Dynamo's. The envelope repeats publisher_id and
// sequence, and is what counts.
func splitZMQMessage(parts [][]byte) (string, []byte, error) {
	switch len(parts) {
	case 2:
		return string(parts[0]), parts[1], nil
	case 4:
		if len(parts[1]) != 8 || len(parts[2]) != 8 {
			return string(parts[0]), nil, fmt.Errorf("%w: ZeroMQ message's publisher_id and sequence parts are %d and %d bytes, want 8 each", ErrEnvelope, len(parts[1]), len(parts[2]))
		}
		return string(parts[0]), parts[3], nil
	}
	return "", nil, fmt.Errorf("%w: ZeroMQ message of %d parts, want 4 (subject, publisher_id, sequence, frame) or 2 (subject, frame)", ErrEnvelope, len(parts))
}
