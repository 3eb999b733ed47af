package workqueue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/internal/jsconsume"
	"github.com/loomrt/loom/objectstore"
)

// ErrNoQueue is wrapped by Admin's errors for a queue that does not exist.
var ErrNoQueue = errors.New("workqueue: no such queue")

// ErrStreamMismatch is returned when a queue's stream exists with settings
// the queue cannot work with (subjects that do not take its subject), or
// when its stream or its dead-letter stream is another queue's.
var ErrStreamMismatch = errors.New("workqueue: existing stream does not fit the queue")

// Admin inspects and repairs queues without knowing their job types, from
// what Loom writes in each queue's stream metadata. `loom queue` is built
// on it.
type Admin struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// NewAdmin returns an Admin on nc.
func NewAdmin(nc *nats.Conn) (*Admin, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("workqueue: %w", err)
	}
	return &Admin{nc: nc, js: js}, nil
}

// List returns every Loom work queue on the server, in name order.
func (a *Admin) List(ctx context.Context) ([]Info, error) {
	lister := a.js.ListStreams(ctx)
	var out []Info
	for si := range lister.Info() {
		if si.Config.Metadata[metaKind] != kindQueue {
			continue
		}
		info, err := inspect(ctx, a.js, si.Config.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("workqueue: listing streams: %w", hint(err))
	}
	return out, nil
}

// Info returns the state of the queue called name.
func (a *Admin) Info(ctx context.Context, name string) (Info, error) {
	return inspect(ctx, a.js, name)
}

// queueStream returns a queue's stream, checking that it is one.
func queueStream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, *jetstream.StreamInfo, error) {
	if !nameRE.MatchString(name) {
		return nil, nil, fmt.Errorf("%w: %q is not a valid queue name", ErrNoQueue, name)
	}
	st, err := js.Stream(ctx, name)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, nil, fmt.Errorf("%w: %s (see loom queue ls)", ErrNoQueue, name)
		}
		return nil, nil, fmt.Errorf("workqueue: queue %s: %w", name, hint(err))
	}
	si := st.CachedInfo()
	if si.Config.Metadata[metaKind] != kindQueue {
		return nil, nil, fmt.Errorf("%w: stream %s is not a Loom work queue", ErrNoQueue, name)
	}
	return st, si, nil
}

func inspect(ctx context.Context, js jetstream.JetStream, name string) (Info, error) {
	st, si, err := queueStream(ctx, js, name)
	if err != nil {
		return Info{}, err
	}
	md := si.Config.Metadata
	info := Info{
		Name:     name,
		Group:    md[metaGroup],
		Codec:    md[metaCodec],
		Jobs:     si.State.Msgs,
		Bytes:    si.State.Bytes,
		Storage:  strings.ToLower(si.Config.Storage.String()),
		Replicas: si.Config.Replicas,
		Created:  si.Created,
	}
	if len(si.Config.Subjects) > 0 {
		info.Subject = queueSubject(si)
	}
	info.MaxDeliver, _ = strconv.Atoi(md[metaMaxDeliver])
	switch {
	case info.Group == "":
	case si.State.Consumers == 0:
		// No worker has started yet: every job is pending. (Asking for
		// the consumer would count a not-found in the server's JetStream
		// API errors at every look, and dashboards look every second.)
		info.Pending = si.State.Msgs
	default:
		if c, err := st.Consumer(ctx, info.Group); err == nil {
			ci := c.CachedInfo()
			info.Pending = ci.NumPending
			info.InFlight = uint64(ci.NumAckPending)
			info.Redelivered = uint64(ci.NumRedelivered)
			info.Waiting = ci.NumWaiting
		} else if errors.Is(err, jetstream.ErrConsumerNotFound) {
			// No worker has started yet: every job is pending.
			info.Pending = si.State.Msgs
		} else {
			return Info{}, fmt.Errorf("workqueue: queue %s: consumer %s: %w", name, info.Group, err)
		}
	}
	if dl := md[metaDeadLetter]; dl != "" {
		if ds, err := js.Stream(ctx, dl); err == nil {
			info.DeadLetters = ds.CachedInfo().State.Msgs
		}
	}
	return info, nil
}

// Message is a job as stored, read without consuming it.
type Message struct {
	// Seq is its sequence number in its stream.
	Seq uint64
	// Subject it was published to, and when it was stored.
	Subject string
	Time    time.Time
	// Header and Data are the message as stored; Data is empty when the
	// payload was offloaded (see objectstore.RefHeader).
	Header nats.Header
	Data   []byte
	// Codec is the queue's encoding of Data.
	Codec string
}

// JSON returns the job as JSON for display: decoded with the queue's
// codec, or as a JSON string for a queue of bytes.
func (m Message) JSON() (json.RawMessage, error) {
	if ref := m.Header.Get("Loom-Payload-Ref"); ref != "" && len(m.Data) == 0 {
		return json.Marshal(map[string]string{"offloaded": ref})
	}
	switch m.Codec {
	case codecBytes, "":
		return json.Marshal(string(m.Data))
	case codec.JSONName:
		if json.Valid(m.Data) {
			return json.RawMessage(m.Data), nil
		}
		return nil, fmt.Errorf("workqueue: message %d is not valid JSON", m.Seq)
	default:
		c, err := codec.ByName(m.Codec)
		if err != nil {
			return nil, err
		}
		var v any
		if err := c.Unmarshal(m.Data, &v); err != nil {
			return nil, fmt.Errorf("workqueue: message %d does not decode with %s: %w", m.Seq, m.Codec, err)
		}
		return json.Marshal(codec.JSONValue(v))
	}
}

// read returns up to n messages of stream st on subject, from the first.
func read(ctx context.Context, st jetstream.Stream, subject string, n int, codecName string) ([]Message, error) {
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []Message
	for seq := info.State.FirstSeq; len(out) < n && seq <= info.State.LastSeq && seq > 0; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			return nil, err
		}
		out = append(out, Message{Seq: m.Sequence, Subject: m.Subject, Time: m.Time, Header: m.Header, Data: m.Data, Codec: codecName})
		seq = m.Sequence + 1
	}
	return out, nil
}

// Peek returns up to n of the queue's jobs, oldest first, without
// consuming them. Jobs delivered and not yet acknowledged are included.
func (a *Admin) Peek(ctx context.Context, name string, n int) ([]Message, error) {
	st, si, err := queueStream(ctx, a.js, name)
	if err != nil {
		return nil, err
	}
	msgs, err := read(ctx, st, queueSubject(si), n, si.Config.Metadata[metaCodec])
	if err != nil {
		return nil, fmt.Errorf("workqueue: peek at queue %s: %w", name, err)
	}
	return msgs, nil
}

// DeadLetter is a job in a queue's dead-letter stream.
type DeadLetter struct {
	// Message is the dead-lettered copy; its Seq is in the dead-letter
	// stream.
	Message
	// Reason is failed, permanent, decode, payload or expired, and Error
	// the last error.
	Reason, Error string
	// Deliveries counts the deliveries made before it was given up.
	Deliveries int
	// OriginalSeq was its sequence number in the queue.
	OriginalSeq uint64
	// Group is the consumer that gave up on it; DeadAt when.
	Group  string
	DeadAt time.Time
}

// Dead-letter headers, as documented in docs/queues.md.
const (
	HeaderError      = jsconsume.HeaderError
	HeaderReason     = jsconsume.HeaderReason
	HeaderDeliveries = jsconsume.HeaderDeliveries
	HeaderQueue      = jsconsume.HeaderQueue
	HeaderStreamSeq  = jsconsume.HeaderStreamSeq
)

// DeadLetters returns up to n of the queue's dead letters, oldest first.
func (a *Admin) DeadLetters(ctx context.Context, name string, n int) ([]DeadLetter, error) {
	_, si, err := queueStream(ctx, a.js, name)
	if err != nil {
		return nil, err
	}
	ds, err := a.js.Stream(ctx, deadLetterStream(name))
	if err != nil {
		return nil, fmt.Errorf("workqueue: dead-letter stream of queue %s: %w", name, err)
	}
	msgs, err := read(ctx, ds, deadLetterSubject(name), n, si.Config.Metadata[metaCodec])
	if err != nil {
		return nil, fmt.Errorf("workqueue: dead letters of queue %s: %w", name, err)
	}
	out := make([]DeadLetter, 0, len(msgs))
	for _, m := range msgs {
		dl := DeadLetter{Message: m}
		info, err := jsconsume.ParseDeadLetter(m.Header)
		if err != nil {
			dl.Error = "unreadable dead-letter headers: " + err.Error()
		} else {
			dl.Reason, dl.Error, dl.Deliveries = info.Reason, info.Error, info.Deliveries
			dl.OriginalSeq, dl.Group, dl.DeadAt = info.StreamSeq, info.Group, info.Time
		}
		out = append(out, dl)
	}
	return out, nil
}

// Requeue moves dead letters back into the queue, as new jobs with their
// original body and headers: those whose sequence numbers in the
// dead-letter stream are given, or all of them if none are (those there
// when it starts, read and moved one at a time: a dead-letter stream may
// hold more than fits in memory). It returns how many it moved.
func (a *Admin) Requeue(ctx context.Context, name string, seqs ...uint64) (int, error) {
	_, si, err := queueStream(ctx, a.js, name)
	if err != nil {
		return 0, err
	}
	ds, err := a.js.Stream(ctx, deadLetterStream(name))
	if err != nil {
		return 0, fmt.Errorf("workqueue: dead-letter stream of queue %s: %w", name, err)
	}
	subject := queueSubject(si)
	moved := 0
	move := func(m *jetstream.RawStreamMsg) error {
		h := nats.Header{}
		for k, v := range m.Header {
			if strings.HasPrefix(k, "Loom-Dlq-") || k == nats.MsgIdHdr {
				continue
			}
			h[k] = v
		}
		// Requeueing the same dead letter twice stores it once.
		h.Set(nats.MsgIdHdr, "requeue."+name+"."+strconv.FormatUint(m.Sequence, 10))
		if _, err := a.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: h, Data: m.Data}); err != nil {
			return fmt.Errorf("workqueue: requeue dead letter %d of queue %s: %w", m.Sequence, name, err)
		}
		if err := ds.DeleteMsg(ctx, m.Sequence); err != nil {
			return fmt.Errorf("workqueue: dead letter %d of queue %s was requeued but not deleted: %w", m.Sequence, name, err)
		}
		moved++
		return nil
	}
	if len(seqs) > 0 {
		for _, seq := range seqs {
			m, err := ds.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return moved, fmt.Errorf("workqueue: queue %s has no dead letter %d (requeued or purged already, or past dead_letter_max_age?): DeadLetters, or loom queue dlq %s, lists them", name, seq, name)
			}
			if err != nil {
				return moved, fmt.Errorf("workqueue: dead letter %d of queue %s: %w", seq, name, err)
			}
			if err := move(m); err != nil {
				return moved, err
			}
		}
		return moved, nil
	}
	info, err := ds.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("workqueue: dead-letter stream of queue %s: %w", name, err)
	}
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; {
		m, err := ds.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(deadLetterSubject(name)))
		if errors.Is(err, jetstream.ErrMsgNotFound) || err == nil && m.Sequence > info.State.LastSeq {
			break
		}
		if err != nil {
			return moved, fmt.Errorf("workqueue: dead letters of queue %s: %w", name, err)
		}
		if err := move(m); err != nil {
			return moved, err
		}
		seq = m.Sequence + 1
	}
	return moved, nil
}

// PurgeDeadLetters deletes all of a queue's dead letters and returns how
// many there were.
func (a *Admin) PurgeDeadLetters(ctx context.Context, name string) (uint64, error) {
	if _, _, err := queueStream(ctx, a.js, name); err != nil {
		return 0, err
	}
	ds, err := a.js.Stream(ctx, deadLetterStream(name))
	if err != nil {
		return 0, fmt.Errorf("workqueue: dead-letter stream of queue %s: %w", name, err)
	}
	n := ds.CachedInfo().State.Msgs
	if err := ds.Purge(ctx); err != nil {
		return 0, fmt.Errorf("workqueue: purge dead letters of queue %s: %w", name, err)
	}
	return n, nil
}

// Add enqueues a job given as JSON, encoded with the queue's codec (for a
// queue of bytes, a JSON string is sent as its text and anything else as
// the JSON itself). A job above the server's max_payload is offloaded to
// the queue's object store bucket, as Enqueue does (or refused with an
// error naming its size and the limit past the object size limit). It
// returns the job's sequence number.
func (a *Admin) Add(ctx context.Context, name string, job json.RawMessage, key string) (uint64, error) {
	_, si, err := queueStream(ctx, a.js, name)
	if err != nil {
		return 0, err
	}
	var data []byte
	switch cn := si.Config.Metadata[metaCodec]; cn {
	case codecBytes:
		var s string
		if json.Unmarshal(job, &s) == nil {
			data = []byte(s)
		} else {
			data = job
		}
	case codec.JSONName:
		if !json.Valid(job) {
			return 0, fmt.Errorf("workqueue: the job for queue %s is not valid JSON", name)
		}
		data = job
	default:
		c, err := codec.ByName(cn)
		if err != nil {
			return 0, fmt.Errorf("workqueue: queue %s: %w", name, err)
		}
		v, err := codec.ParseJSON(job)
		if err != nil {
			return 0, fmt.Errorf("workqueue: the job for queue %s: %w", name, err)
		}
		if data, err = c.Marshal(nil, v); err != nil {
			return 0, fmt.Errorf("workqueue: encoding the job for queue %s: %w", name, err)
		}
	}
	m := &nats.Msg{Subject: queueSubject(si), Data: data, Header: nats.Header{}}
	if key != "" {
		m.Header.Set(KeyHeader, key)
	}
	// Above max_payload the job goes to the queue's object store bucket,
	// as Enqueue sends it.
	bucket := si.Config.Metadata[metaBucket]
	if bucket == "" {
		bucket = objectstore.DefaultBucket
	}
	off, err := objectstore.NewOffloader(a.nc, a.js, objectstore.OffloadConfig{
		Policy: si.Config.Metadata[metaLarge],
		Bucket: objectstore.Config{Bucket: bucket, Storage: si.Config.Metadata[metaStorage], Replicas: si.Config.Replicas},
	})
	if err != nil {
		return 0, fmt.Errorf("workqueue: queue %s: %w", name, err)
	}
	ref, err := off.Prepare(ctx, m, name, "job for queue "+name)
	if err != nil {
		return 0, fmt.Errorf("workqueue: %w", err)
	}
	if key != "" {
		m.Header.Set(nats.MsgIdHdr, keyID(key, data))
	}
	ack, err := a.js.PublishMsg(ctx, m)
	if err != nil {
		if ref != nil {
			_ = off.Delete(context.WithoutCancel(ctx), *ref)
		}
		return 0, fmt.Errorf("workqueue: enqueue to queue %s: %w", name, hint(err))
	}
	return ack.Sequence, nil
}

// queueSubject returns the subject jobs of the queue of si go to: the one
// its metadata names (a stream adopted from elsewhere may have several),
// else its first.
func queueSubject(si *jetstream.StreamInfo) string {
	if s := si.Config.Metadata[metaSubject]; s != "" {
		return s
	}
	return si.Config.Subjects[0]
}
