package objectstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Policies for payloads above the limit: the values of queue.large_payloads.
const (
	// Offload stores the payload as an object and sends a reference.
	Offload = "offload"
	// Reject refuses the payload with a *TooLargeError.
	Reject = "reject"
)

// DefaultMaxObjectSize bounds what Resolve reads for one reference when
// OffloadConfig.MaxObjectSize is zero: 1 GiB.
const DefaultMaxObjectSize = 1 << 30

// TooLargeError is the error for a payload above the server's max_payload
// that could not travel by reference.
type TooLargeError struct {
	// What names the payload: "job for queue prefill", "event on topic x".
	What string
	// Size is the payload's size with its headers, and Limit the server's
	// max_payload, in bytes.
	Size, Limit int64
	// Reserve is the part of Limit kept for headers added after the
	// check (the reference, the message id): a message may take at most
	// Limit - Reserve bytes.
	Reserve int64
	// Policy is the policy in force: Reject, or Offload when the object
	// is too large even for MaxObjectSize.
	Policy string
}

// Error names the payload, its size, the limit and what to do.
func (e *TooLargeError) Error() string {
	if e.Policy == Offload {
		return fmt.Sprintf("objectstore: %s is %d bytes, above the largest offloaded payload of %d bytes; raise the offload limit or send a smaller payload", e.What, e.Size, e.Limit)
	}
	const todo = "set queue.large_payloads=offload to send it through the object store, or raise max_payload in nats-server's config"
	if e.Reserve > 0 {
		return fmt.Sprintf("objectstore: %s is %d bytes with its headers, above the %d bytes a message may take (the server's max_payload of %d bytes less %d kept for headers added on the way); %s",
			e.What, e.Size, e.Limit-e.Reserve, e.Limit, e.Reserve, todo)
	}
	return fmt.Sprintf("objectstore: %s is %d bytes with its headers, above the server's max_payload of %d bytes; %s", e.What, e.Size, e.Limit, todo)
}

// OffloadConfig configures an Offloader.
type OffloadConfig struct {
	// Policy is Offload (default) or Reject.
	Policy string
	// Bucket configures the bucket objects go to, created on first use.
	Bucket Config
	// MaxObjectSize bounds both what is offloaded and what Resolve reads
	// for one reference; 0 is DefaultMaxObjectSize.
	MaxObjectSize int64
	// Limit is the largest message, headers included; 0 asks the
	// connection (the server's max_payload). Tests set it lower.
	Limit int64
}

// Offloader moves payloads above the server's max_payload to the object
// store and back. It is safe for concurrent use; its zero value is not.
type Offloader struct {
	js    jetstream.JetStream
	nc    *nats.Conn
	cfg   OffloadConfig
	limit int64

	mu      sync.Mutex
	stores  map[string]*Store  // by bucket, only those that exist
	lookups map[string]*lookup // by bucket, those being looked up
}

// lookup is one bucket being opened or looked up; done closes when st or
// err is set.
type lookup struct {
	done chan struct{}
	st   *Store
	err  error
}

// NewOffloader returns an Offloader that uses js's connection nc.
func NewOffloader(nc *nats.Conn, js jetstream.JetStream, cfg OffloadConfig) (*Offloader, error) {
	switch cfg.Policy {
	case "":
		cfg.Policy = Offload
	case Offload, Reject:
	default:
		return nil, fmt.Errorf("objectstore: large payload policy %q: use %s or %s", cfg.Policy, Offload, Reject)
	}
	if cfg.Bucket.Bucket == "" {
		cfg.Bucket.Bucket = DefaultBucket
	}
	if cfg.MaxObjectSize <= 0 {
		cfg.MaxObjectSize = DefaultMaxObjectSize
	}
	return &Offloader{js: js, nc: nc, cfg: cfg, limit: cfg.Limit,
		stores: make(map[string]*Store), lookups: make(map[string]*lookup)}, nil
}

// Limit returns the largest message, headers included, that goes out as
// is: the server's max_payload unless OffloadConfig.Limit says otherwise.
func (o *Offloader) Limit() int64 {
	if o.limit > 0 {
		return o.limit
	}
	return o.nc.MaxPayload()
}

// HeaderSize returns the bytes h takes on the wire.
func HeaderSize(h nats.Header) int64 {
	if len(h) == 0 {
		return 0
	}
	n := int64(len("NATS/1.0\r\n\r\n"))
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4) // "k: v\r\n"
		}
	}
	return n
}

// refReserve is room kept for the reference header and the headers added
// after Prepare (the message id), so that a message Prepare let through
// still fits.
const refReserve = 512

// Prepare makes m fit under the limit. A message that fits is left alone.
// One whose headers alone do not fit is refused: only bodies are
// offloaded. A larger one is, under Offload, stored as the object prefix + "/" + a
// unique id, its body replaced by a reference in RefHeader (the returned
// Ref, so the caller can delete the object if sending fails); under
// Reject, or past MaxObjectSize, Prepare returns a *TooLargeError that
// names what (as "job for queue prefill").
func (o *Offloader) Prepare(ctx context.Context, m *nats.Msg, prefix, what string) (*Ref, error) {
	limit := o.Limit()
	size := int64(len(m.Data)) + HeaderSize(m.Header)
	if size+refReserve <= limit {
		return nil, nil
	}
	if hs := HeaderSize(m.Header); hs+refReserve > limit {
		// Only the body can be offloaded: the message would be refused
		// after the body went to the object store for nothing.
		return nil, fmt.Errorf("objectstore: %s has %d bytes of headers, above the %d bytes a message may take (the server's max_payload of %d bytes less %d kept for headers added on the way); headers are never offloaded: send smaller ones, or put what they carry in the body",
			what, hs, limit-refReserve, limit, refReserve)
	}
	if o.cfg.Policy == Reject {
		return nil, &TooLargeError{What: what, Size: size, Limit: limit, Reserve: refReserve, Policy: Reject}
	}
	if int64(len(m.Data)) > o.cfg.MaxObjectSize {
		return nil, &TooLargeError{What: what, Size: int64(len(m.Data)), Limit: o.cfg.MaxObjectSize, Policy: Offload}
	}
	st, err := o.bucket(ctx)
	if err != nil {
		return nil, fmt.Errorf("objectstore: %s is %d bytes, above max_payload %d, and cannot be offloaded: %w", what, size, limit, err)
	}
	name := prefix + "/" + nuid.Next()
	ref, err := st.Put(ctx, name, bytes.NewReader(m.Data))
	if err != nil && o.lost(ctx, st, err) {
		// The bucket went away under the running process: make it again,
		// as work queues and EventBuses make their streams again.
		slog.Warn("objectstore: the bucket was gone (a server restarted without it, or it was removed); making it again", "bucket", st.bucket)
		if st, err = o.bucket(ctx); err == nil {
			ref, err = st.Put(ctx, name, bytes.NewReader(m.Data))
		}
	}
	if err != nil {
		return nil, err
	}
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	m.Header.Set(RefHeader, ref.String())
	m.Data = nil
	return &ref, nil
}

// bucket opens the configured bucket, creating it on first use.
func (o *Offloader) bucket(ctx context.Context) (*Store, error) {
	return o.store(ctx, o.cfg.Bucket.Bucket, func(ctx context.Context) (*Store, error) {
		return open(ctx, o.js, o.cfg.Bucket)
	})
}

// store returns the known Store of bucket, or finds it with find and
// keeps it. One find per bucket runs at a time, without the lock: a
// lookup that hangs holds up only the callers that wait for the same
// bucket (until their context ends), never those of a known bucket or of
// another. A caller whose lookup ended in an error while others waited
// for it leaves them to look it up again: the error may be its context's.
func (o *Offloader) store(ctx context.Context, bucket string, find func(context.Context) (*Store, error)) (*Store, error) {
	for {
		o.mu.Lock()
		if st, ok := o.stores[bucket]; ok {
			o.mu.Unlock()
			return st, nil
		}
		l, busy := o.lookups[bucket]
		if !busy {
			l = &lookup{done: make(chan struct{})}
			o.lookups[bucket] = l
		}
		o.mu.Unlock()
		if !busy {
			l.st, l.err = find(ctx)
			o.mu.Lock()
			delete(o.lookups, bucket)
			if l.err == nil {
				o.stores[bucket] = l.st
			}
			o.mu.Unlock()
			close(l.done)
			return l.st, l.err
		}
		select {
		case <-l.done:
			if l.err == nil {
				return l.st, nil
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// lost reports whether st's bucket is gone (a server with memory storage
// restarted, or an operator removed it), given that err failed a request
// to it, and forgets it so that bucket makes it again. No stream answers
// while JetStream restarts too; the server is asked, so that a bucket
// that is there is never made again.
func (o *Offloader) lost(ctx context.Context, st *Store, err error) bool {
	if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, jetstream.ErrNoStreamResponse) && !bucketGone(err) {
		return false
	}
	if _, err := o.js.ObjectStore(ctx, st.bucket); !bucketGone(err) {
		return false
	}
	o.mu.Lock()
	if o.stores[st.bucket] == st {
		delete(o.stores, st.bucket)
	}
	o.mu.Unlock()
	return true
}

// bucketGone reports whether err says a bucket's stream does not exist.
func bucketGone(err error) bool {
	return errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// existing returns the bucket named by a reference, which must exist.
func (o *Offloader) existing(ctx context.Context, bucket string) (*Store, error) {
	return o.store(ctx, bucket, func(ctx context.Context) (*Store, error) {
		return attach(ctx, o.js, bucket)
	})
}

// Resolve returns the payload of a message: body itself when h carries no
// reference, else the object the reference names, read in full. It checks
// the reference (ParseRef), refuses one that carries no digest or whose
// size is above MaxObjectSize, and fails unless the object has exactly the
// size and digest the reference claims. The returned Ref is nil when there
// was no reference.
func (o *Offloader) Resolve(ctx context.Context, h nats.Header, body []byte) ([]byte, *Ref, error) {
	v := h.Get(RefHeader)
	if v == "" {
		return body, nil, nil
	}
	ref, err := ParseRef(v)
	if err != nil {
		return nil, nil, err
	}
	// A reference comes from whoever may publish on the subject: without
	// a digest, one forged with an object's name and size had any object
	// the consumer could reach read as the payload.
	if ref.Digest == "" {
		return nil, &ref, fmt.Errorf("%w: object %s/%s: the reference carries no digest; Loom's always do", ErrBadRef, ref.Bucket, ref.Name)
	}
	if ref.Size > o.cfg.MaxObjectSize {
		return nil, &ref, fmt.Errorf("%w: object %s/%s claims %d bytes, above the limit of %d", ErrBadRef, ref.Bucket, ref.Name, ref.Size, o.cfg.MaxObjectSize)
	}
	st, err := o.existing(ctx, ref.Bucket)
	if err != nil {
		return nil, &ref, err
	}
	rc, got, err := st.Open(ctx, ref.Name)
	if err != nil {
		if o.lost(ctx, st, err) {
			return nil, &ref, fmt.Errorf("%w: object %s/%s: its bucket does not exist (a server restarted without it, or it was removed)", ErrNotFound, ref.Bucket, ref.Name)
		}
		return nil, &ref, err
	}
	defer rc.Close()
	if got.Size != ref.Size || (ref.Digest != "" && got.Digest != ref.Digest) {
		return nil, &ref, fmt.Errorf("%w: object %s/%s is %d bytes with digest %s, the reference says %d bytes with %s (replaced since it was sent?)",
			ErrBadRef, ref.Bucket, ref.Name, got.Size, got.Digest, ref.Size, ref.Digest)
	}
	buf := make([]byte, 0, ref.Size)
	w := bytes.NewBuffer(buf)
	n, err := io.Copy(w, io.LimitReader(rc, ref.Size+1))
	if err != nil {
		if errors.As(err, new(readError)) {
			return nil, &ref, err
		}
		return nil, &ref, fmt.Errorf("objectstore: read %s/%s: %w", ref.Bucket, ref.Name, err)
	}
	if n != ref.Size {
		return nil, &ref, fmt.Errorf("%w: object %s/%s yielded %d bytes, want %d", ErrBadRef, ref.Bucket, ref.Name, n, ref.Size)
	}
	return w.Bytes(), &ref, nil
}

// Delete removes the object ref names; an object already gone is not an
// error. An object in another bucket than the configured one is not
// Delete's to remove: the reference may be forged (it comes with a job,
// and a job's object is deleted after its ack), and such an object was
// not offloaded here; it is refused with ErrBadRef.
func (o *Offloader) Delete(ctx context.Context, ref Ref) error {
	if ref.Bucket != o.cfg.Bucket.Bucket {
		return fmt.Errorf("%w: object %s/%s is not in bucket %s (queue.object_bucket), where payloads are offloaded here; not deleting it",
			ErrBadRef, ref.Bucket, ref.Name, o.cfg.Bucket.Bucket)
	}
	st, err := o.existing(ctx, ref.Bucket)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	if err := st.Delete(ctx, ref.Name); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	return nil
}
