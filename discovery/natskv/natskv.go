package natskv

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/internal/owned"
	"github.com/loomrt/loom/internal/supervise"
	"github.com/loomrt/loom/natsconn"
)

// Defaults for [Config].
const (
	// DefaultBucket is the bucket New uses when Config.Bucket is empty.
	DefaultBucket = "loom_discovery"
	// DefaultTTL is the record TTL New uses when Config.TTL is zero, the
	// etcd backend's lease TTL.
	DefaultTTL = 10 * time.Second
)

// listTimeout bounds a List whose context has no deadline.
const listTimeout = 10 * time.Second

// apiTimeout bounds one JetStream API request made in the background.
const apiTimeout = 5 * time.Second

// history is how many revisions of a key the bucket keeps.
const history = 2

// closeTimeout bounds how long Close spends removing records; what it
// cannot remove expires within the TTL anyway.
const closeTimeout = 2 * time.Second

// Headers of the records' messages.
const (
	// ownerHeader names the Discovery value that wrote a record, so that
	// an owner whose refresh was applied but not acknowledged knows the
	// record is still its own.
	ownerHeader = "Loom-Owner"
	// kvOperationHeader marks a delete or purge written by a KV client
	// (nats.go's own constant is not exported).
	kvOperationHeader = "KV-Operation"
	// expiredReason is the marker reason JetStream gives a record that
	// outlived its TTL.
	expiredReason = "MaxAge"
)

// Config configures [New]. The zero value uses the defaults.
type Config struct {
	// Bucket is the KV bucket that holds the records; "" means
	// DefaultBucket. New creates it if it does not exist.
	Bucket string
	// TTL is how long a record outlives its owner's last refresh, so a
	// process that dies without Close leaves discovery within TTL. The
	// owner refreshes its records every TTL/3. Zero means DefaultTTL. It is
	// rounded up to whole seconds, the unit of JetStream's per-message TTL,
	// and must be at least 1s.
	TTL time.Duration
	// Replicas is the bucket's replica count if New creates it; 0 means 1.
	Replicas int
	// Logger receives warnings about malformed records, failed refreshes
	// and re-syncs; nil means slog.Default().
	Logger *slog.Logger
}

// Discovery is a discovery.Discovery on a JetStream KV bucket. Create one
// with [New]; it is safe for concurrent use.
type Discovery struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	kvCfg  jetstream.KeyValueConfig // to create the bucket again if it is lost
	bucket string
	pre    string // subject prefix of the bucket's keys: "$KV.{bucket}."
	ttl    time.Duration
	owner  string // ownerHeader of this value's writes
	log    *slog.Logger
	tasks  *supervise.Group // the refresh loop and the watches

	mu     sync.Mutex
	closed bool
	owned  map[string]*record // by KV key

	restoreMu sync.Mutex // one restoreBucket at a time

	created   *nats.Subscription // JetStream's advisories that the bucket's stream was created
	createdMu sync.Mutex
	recreated chan struct{} // closed, and replaced, when the bucket's stream is created again
}

var _ discovery.Discovery = (*Discovery)(nil)

// record is one record this Discovery registered and keeps refreshing. A
// new Register makes a new record, so pointer identity tells two
// registrations of a key apart.
type record struct {
	key   string
	value []byte
	rev   uint64 // last revision written; guarded by Discovery.mu
}

// New returns a Discovery whose records live in cfg.Bucket on nc's
// JetStream. It creates the bucket if it does not exist and binds to it if
// it does, so any number of processes may call it at once. It fails with an
// error naming the server if JetStream is not enabled there, if the server
// is older than 2.11 (no per-message TTL), or if an existing bucket of that
// name was not made for per-key TTL.
//
// nc stays the caller's: Close does not close it. Give nc unlimited
// reconnects (natsconn's default) so that records and watches survive a
// server restart.
func New(ctx context.Context, nc *nats.Conn, cfg Config) (*Discovery, error) {
	if nc == nil {
		return nil, errors.New("natskv: New needs a NATS connection; got nil")
	}
	ttl := cmp.Or(cfg.TTL, DefaultTTL)
	if ttl < time.Second {
		return nil, fmt.Errorf("natskv: Config.TTL %v is below 1s, the shortest per-message TTL JetStream supports", cfg.TTL)
	}
	if r := ttl % time.Second; r != 0 {
		ttl += time.Second - r
	}
	if cfg.Replicas < 0 {
		return nil, fmt.Errorf("natskv: Config.Replicas %d is negative", cfg.Replicas)
	}
	bucket := cmp.Or(cfg.Bucket, DefaultBucket)
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "discovery/natskv", "bucket", bucket)

	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natskv: %w", err)
	}
	kvCfg := jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "Loom discovery records (discovery/natskv)",
		// Two revisions per key, so that a delete marker does not erase
		// the record before a watcher that lags a little has seen it.
		History: history,
		// Records carry their own TTL; the marker JetStream leaves when
		// one runs out only has to reach the live watchers. It is the
		// shortest allowed, as JetStream wants every TTL in a bucket
		// with history to be at least this long.
		LimitMarkerTTL: time.Second,
		Replicas:       max(cfg.Replicas, 1),
	}
	kv, err := openBucket(ctx, js, kvCfg)
	if err != nil {
		return nil, openError(nc, bucket, err)
	}
	stream, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return nil, openError(nc, bucket, err)
	}
	sc := stream.CachedInfo().Config
	if !sc.AllowMsgTTL || sc.SubjectDeleteMarkerTTL <= 0 {
		return nil, fmt.Errorf("natskv: bucket %q on the nats-server at %s was not made for per-key TTL "+
			"(allow_msg_ttl %v, subject_delete_marker_ttl %v), so dead owners' records would never expire or "+
			"watchers would not see them go; delete the bucket or set Config.Bucket to another name",
			bucket, natsconn.ServerURL(nc), sc.AllowMsgTTL, sc.SubjectDeleteMarkerTTL)
	}
	if sc.MaxMsgsPerSubject != 1 && sc.SubjectDeleteMarkerTTL > ttl {
		return nil, fmt.Errorf("natskv: Config.TTL %v is shorter than the limit marker TTL %v of bucket %q, "+
			"which JetStream does not allow; use a longer TTL or another bucket", ttl, sc.SubjectDeleteMarkerTTL, bucket)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])

	d := &Discovery{
		nc:     nc,
		js:     js,
		kv:     kv,
		kvCfg:  kvCfg,
		bucket: bucket,
		pre:    "$KV." + bucket + ".",
		ttl:    ttl,
		owner:  hex.EncodeToString(id[:]),
		log:    log,
		tasks:  supervise.New(context.Background(), log, nil),
		owned:  make(map[string]*record),

		recreated: make(chan struct{}),
	}
	// A KV watcher's consumer goes with a deleted stream, and nats.go
	// would recreate it on a new stream of the same name from the
	// sequence it had reached, which means nothing there: watches start
	// again when the stream is created again.
	d.created, err = nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.CREATED.KV_"+bucket, func(*nats.Msg) {
		d.createdMu.Lock()
		close(d.recreated)
		d.recreated = make(chan struct{})
		d.createdMu.Unlock()
	})
	if err != nil {
		return nil, fmt.Errorf("natskv: listen for bucket %q being created again: %w", bucket, err)
	}
	if err := d.tasks.Go("natskv refresh", d.refreshLoop, supervise.Restart(time.Second, ttl)); err != nil {
		_ = d.created.Unsubscribe()
		return nil, err
	}
	return d, nil
}

// recreatedCh returns a channel that is closed when the bucket's stream is
// next created again.
func (d *Discovery) recreatedCh() <-chan struct{} {
	d.createdMu.Lock()
	defer d.createdMu.Unlock()
	return d.recreated
}

// openBucket binds to the bucket, creating it if it is missing.
func openBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, err
	}
	kv, err = js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		// Another process created it first.
		return js.KeyValue(ctx, cfg.Bucket)
	}
	return kv, err
}

// restoreBucket creates the bucket again if err, from a write, says no
// stream took it, as after the nats-server restarts without its JetStream
// data, and reports whether the bucket exists now. The KV handle names the stream,
// so it works again on the new one.
func (d *Discovery) restoreBucket(ctx context.Context, err error) bool {
	if !errors.Is(err, jetstream.ErrNoStreamResponse) {
		return false
	}
	d.restoreMu.Lock()
	defer d.restoreMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	_, err = d.js.KeyValue(ctx, d.bucket)
	switch {
	case err == nil:
		return true // someone else created it again, or it was never gone
	case !errors.Is(err, jetstream.ErrBucketNotFound):
		return false
	}
	if _, err := openBucket(ctx, d.js, d.kvCfg); err != nil {
		d.log.Warn("natskv: the bucket is gone and could not be created again; trying again", "err", err)
		return false
	}
	d.log.Warn("natskv: the bucket was gone (nats-server restarted without its JetStream data?); created it again, and records are registered again")
	return true
}

// openError says why the bucket could not be opened, and what to do.
func openError(nc *nats.Conn, bucket string, err error) error {
	server := natsconn.ServerURL(nc)
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled),
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount),
		errors.Is(err, nats.ErrNoResponders):
		return &wrapped{
			msg: fmt.Sprintf("natskv: JetStream is not available on the nats-server at %s: %v "+
				"(enable JetStream on the nats-server (-js) and for this account, or use another discovery backend)", server, err),
			// A server without JetStream answers with no responders;
			// either way errors.Is(err, jetstream.ErrJetStreamNotEnabled).
			errs: []error{err, jetstream.ErrJetStreamNotEnabled},
		}
	case errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported):
		return fmt.Errorf("natskv: the nats-server at %s (version %s) has no per-message TTL: %w "+
			"(natskv needs nats-server 2.11 or newer)", server, nc.ConnectedServerVersion(), err)
	case errors.Is(err, jetstream.ErrInvalidBucketName):
		return fmt.Errorf("natskv: Config.Bucket %q: %w (use letters, digits, '-' and '_')", bucket, err)
	}
	return fmt.Errorf("natskv: open bucket %q on the nats-server at %s: %w", bucket, server, err)
}

// wrapped is an error with its own message that wraps several others.
type wrapped struct {
	msg  string
	errs []error
}

func (e *wrapped) Error() string   { return e.msg }
func (e *wrapped) Unwrap() []error { return e.errs }

// Register publishes inst with a TTL and keeps refreshing it until Close,
// an Unregister of its key, or another client's removal of the record. It
// fails with ErrDuplicate while a record with the same key exists, even one
// whose owner died and whose TTL has not run out yet.
func (d *Discovery) Register(ctx context.Context, inst discovery.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := inst.Validate(); err != nil {
		return err
	}
	if d.isClosed() {
		return discovery.ErrClosed
	}
	value, err := json.Marshal(inst)
	if err != nil {
		return fmt.Errorf("natskv: encode %s: %w", inst.Key(), err)
	}
	key := kvKey(inst)
	rev, err := d.create(ctx, key, value)
	if err != nil {
		return err
	}
	r := &record{key: key, value: value, rev: rev}
	d.mu.Lock()
	if d.closed {
		// Close has already removed what it knew of.
		d.mu.Unlock()
		d.removeOwn(r)
		return discovery.ErrClosed
	}
	d.owned[key] = r
	d.mu.Unlock()
	return nil
}

// create writes a new record under key, over a marker if one is left, and
// returns its revision. It fails with ErrDuplicate if a live record is
// there.
func (d *Discovery) create(ctx context.Context, key string, value []byte) (uint64, error) {
	subj := d.pre + key
	var expect uint64 // 0: no message on the subject
	for range 3 {
		rev, err := d.write(ctx, subj, value, expect)
		if err == nil {
			return rev, nil
		}
		if errors.Is(err, nats.ErrMaxPayload) {
			return 0, fmt.Errorf("natskv: register %s in bucket %q: the record is %d bytes, more than the nats-server at %s takes "+
				"(its max_payload, %d bytes); keep Instance.Metadata small: %w", key, d.bucket, len(value), natsconn.ServerURL(d.nc), d.nc.MaxPayload(), err)
		}
		if d.restoreBucket(ctx, err) {
			expect = 0
			continue
		}
		if !wrongLastSequence(err) {
			return 0, fmt.Errorf("natskv: register %s in bucket %q: %w", key, d.bucket, err)
		}
		m, found, err := d.last(ctx, subj)
		switch {
		case err != nil:
			return 0, fmt.Errorf("natskv: register %s in bucket %q: %w", key, d.bucket, err)
		case !found:
			expect = 0 // a marker expired in between
		case isMarker(m.header):
			expect = m.seq
		default:
			return 0, fmt.Errorf("%w: %s has a live record in bucket %q (revision %d); "+
				"unregister it first, use another instance id, or wait up to %v if its owner died",
				discovery.ErrDuplicate, key, d.bucket, m.seq, d.ttl)
		}
	}
	return 0, fmt.Errorf("natskv: register %s in bucket %q: the key kept changing under three attempts; try again", key, d.bucket)
}

// write publishes value on subj with the TTL, if the subject's last
// revision is expect (0: none), and returns the new revision.
func (d *Discovery) write(ctx context.Context, subj string, value []byte, expect uint64, opts ...jetstream.PublishOpt) (uint64, error) {
	m := &nats.Msg{Subject: subj, Data: value, Header: nats.Header{ownerHeader: []string{d.owner}}}
	opts = append(opts, jetstream.WithMsgTTL(d.ttl), jetstream.WithExpectLastSequencePerSubject(expect))
	ack, err := d.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// wrongLastSequence reports a failed compare-and-set.
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// isMarker reports whether a message's headers make it a removal: a KV
// delete or purge, or a marker the server left (TTL expiry, purge).
func isMarker(h nats.Header) bool {
	return h.Get(kvOperationHeader) != "" || h.Get(jetstream.MarkerReasonHeader) != ""
}

// Unregister removes the record under inst's key, whoever registered it.
// While the NATS connection is down it fails at once instead of waiting
// for ctx to end; a record d registered is no longer rewritten, so it
// expires with its TTL.
func (d *Discovery) Unregister(ctx context.Context, inst discovery.Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := inst.Validate(); err != nil {
		return err
	}
	if d.isClosed() {
		return discovery.ErrClosed
	}
	key := kvKey(inst)
	// Stop refreshing first: if the removal fails, the record still
	// expires.
	d.mu.Lock()
	delete(d.owned, key)
	d.mu.Unlock()
	subj := d.pre + key
	ctx, stop := d.whileConnected(ctx)
	defer stop()
	for range 3 {
		m, found, err := d.last(ctx, subj)
		err = disconnectedErr(ctx, err)
		switch {
		case err != nil:
			return fmt.Errorf("natskv: unregister %s from bucket %q: %w", inst.Key(), d.bucket, err)
		case !found || isMarker(m.header):
			return nil
		}
		// The marker lives as long as the record's TTL, so it outlives
		// the record it hides (which the bucket's history keeps).
		err = disconnectedErr(ctx, d.tombstone(ctx, subj, m.seq, recordTTL(m.header)))
		if err == nil {
			return nil
		}
		if !wrongLastSequence(err) {
			return fmt.Errorf("natskv: unregister %s from bucket %q: %w", inst.Key(), d.bucket, err)
		}
	}
	return fmt.Errorf("natskv: unregister %s from bucket %q: the record kept changing under three attempts; try again", inst.Key(), d.bucket)
}

// errDisconnected ends a call while the NATS connection is down.
var errDisconnected = errors.New("NATS unreachable: the connection is down")

// whileConnected returns a copy of ctx that also ends, with cause
// errDisconnected, while the NATS connection is disconnected, reconnecting
// or closed. A request made meanwhile would otherwise wait out its whole
// timeout, and a process shutting down with NATS gone would wait that
// long for each record; the records expire with their TTL anyway.
func (d *Discovery) whileConnected(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	lost := d.nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	done := make(chan struct{})
	go func() {
		defer close(done)
		switch d.nc.Status() {
		case nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED:
			cancel(errDisconnected)
			return
		}
		select {
		case <-lost:
			cancel(errDisconnected)
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		cancel(context.Canceled)
		<-done
		d.nc.RemoveStatusListener(lost)
	}
}

// disconnectedErr returns errDisconnected, with err, if ctx from
// whileConnected ended because the connection is down; err otherwise.
func disconnectedErr(ctx context.Context, err error) error {
	if err == nil || !errors.Is(context.Cause(ctx), errDisconnected) {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return errDisconnected
	}
	return fmt.Errorf("%w (%v)", errDisconnected, err)
}

// tombstone writes a delete marker on subj if its latest revision is rev.
// The marker expires after ttl; 0 means never.
func (d *Discovery) tombstone(ctx context.Context, subj string, rev uint64, ttl time.Duration) error {
	m := nats.NewMsg(subj)
	m.Header.Set(kvOperationHeader, "DEL")
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(rev)}
	if ttl > 0 {
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	_, err := d.js.PublishMsg(ctx, m, opts...)
	return err
}

// recordTTL returns the TTL a record was written with, or 0 if it has none.
func recordTTL(h nats.Header) time.Duration {
	v := h.Get(jetstream.MsgTTLHeader)
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return d
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return 0 // none, "never" or unreadable: the marker must not expire
}

// List returns the records q selects, ordered by key. It reads them with a
// subject filter, so the server sends only those.
func (d *Discovery) List(ctx context.Context, q discovery.Query) ([]discovery.Instance, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	if d.isClosed() {
		return nil, discovery.ErrClosed
	}
	// The context also ends the goroutine nats.go ties to the KV watcher,
	// and bounds the consumer's creation, which nats.go would otherwise
	// wait for as long as the context lives.
	var cancel context.CancelFunc
	if _, ok := ctx.Deadline(); ok {
		ctx, cancel = context.WithCancel(ctx)
	} else {
		ctx, cancel = context.WithTimeout(ctx, listTimeout)
	}
	defer cancel()
	f := filter(q)
	w, err := d.kv.Watch(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("natskv: list %s in bucket %q: %w", f, d.bucket, err)
	}
	defer stopKeyWatcher(d.nc, w, cancel)
	found := make(map[string]discovery.Instance)
	var maxRev uint64
	check := true // at once: the filter may match nothing
	for {
		if check {
			done, err := d.caughtUp(ctx, f, maxRev)
			if err != nil {
				return nil, fmt.Errorf("natskv: list %s in bucket %q: %w", f, d.bucket, err)
			}
			if done {
				out := slices.Collect(maps.Values(found))
				sortByKey(out)
				return out, nil
			}
		}
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("natskv: list %s in bucket %q: the watch ended early (connection closed?)", f, d.bucket)
			}
			if e == nil { // nats.go's end of the snapshot, a hint only
				check = true
				continue
			}
			maxRev = max(maxRev, e.Revision())
			// By key: a record rewritten meanwhile comes twice.
			if inst, ok := d.decode(e); ok {
				found[e.Key()] = inst
			} else {
				delete(found, e.Key())
			}
			check = len(w.Updates()) == 0
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// caughtUp reports whether a KV watcher on filter that has delivered every
// revision up to maxRev has finished its snapshot.
//
// nats.go ends a snapshot by counting entries against the server's count
// of pending messages, and both go wrong when records are rewritten while
// the snapshot runs (as refreshes do all the time): the end comes early,
// without records that were moved past it. The watcher delivers in
// revision order, so once it has delivered the latest revision the filter
// matches, asked after that delivery, it has delivered every record that
// exists; later revisions are changes.
func (d *Discovery) caughtUp(ctx context.Context, filter string, maxRev uint64) (bool, error) {
	m, found, err := d.last(ctx, d.pre+filter)
	if err != nil {
		return false, err
	}
	return !found || maxRev >= m.seq, nil
}

// storedMsg is what d.last reads of a message.
type storedMsg struct {
	seq    uint64
	header nats.Header
}

// last returns the latest message (a record or a marker) whose subject
// matches subject, which may hold wildcards, or false if there is none. It
// asks the stream's leader: nats.go's lookup takes no wildcards and reads
// from any replica, which may lag.
func (d *Discovery) last(ctx context.Context, subject string) (storedMsg, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	req, err := json.Marshal(struct {
		LastBySubject string `json:"last_by_subj"`
	}{subject})
	if err != nil {
		return storedMsg{}, false, err
	}
	msg, err := d.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.KV_"+d.bucket, req)
	if err != nil {
		return storedMsg{}, false, fmt.Errorf("read the latest revision of %s: %w", subject, err)
	}
	return decodeLast(subject, msg.Data)
}

// decodeLast reads JetStream's answer to a request for the latest message
// on subject.
func decodeLast(subject string, data []byte) (storedMsg, bool, error) {
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Sequence uint64 `json:"seq"`
			Header   []byte `json:"hdrs"`
		} `json:"message"`
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return storedMsg{}, false, fmt.Errorf("read the latest revision of %s: %w", subject, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return storedMsg{}, false, nil
	case resp.Error != nil:
		return storedMsg{}, false, fmt.Errorf("read the latest revision of %s: %w", subject, resp.Error)
	case resp.Message == nil:
		return storedMsg{}, false, fmt.Errorf("read the latest revision of %s: empty answer from JetStream", subject)
	}
	m := storedMsg{seq: resp.Message.Sequence, header: nats.Header{}}
	if len(resp.Message.Header) > 0 {
		var err error
		if m.header, err = nats.DecodeHeadersMsg(resp.Message.Header); err != nil {
			return storedMsg{}, false, fmt.Errorf("read the latest revision of %s: %w", subject, err)
		}
	}
	return m, true, nil
}

// decode returns the instance a KV entry holds, if it is a live, well-formed
// record; it logs a malformed one.
func (d *Discovery) decode(e jetstream.KeyValueEntry) (discovery.Instance, bool) {
	if e.Operation() != jetstream.KeyValuePut {
		return discovery.Instance{}, false
	}
	inst, err := decode(e.Key(), e.Value())
	if err != nil {
		d.log.Warn("natskv: skipping a malformed record", "key", e.Key(), "revision", e.Revision(), "err", err)
		return discovery.Instance{}, false
	}
	return inst, true
}

// stopKeyWatcher stops w, whose context cancel ends, and waits until
// nats.go has let go of it: its delivery goroutine may be blocked on the
// updates channel, so that has to be drained until nats.go closes it.
func stopKeyWatcher(nc *nats.Conn, w jetstream.KeyWatcher, cancel context.CancelFunc) {
	if nc.IsConnected() {
		_ = w.Stop()
	} else {
		// Stop would wait up to 5s for the server to delete the
		// consumer. Ending the context makes nats.go unsubscribe in its
		// own goroutine instead; the server drops an idle consumer itself.
		cancel()
	}
	for range w.Updates() {
	}
	cancel()
}

// Close removes the records registered through d (those another client has
// not replaced meanwhile), stops their refreshes, closes d's watch channels
// and waits for every goroutine d started. It spends at most a couple of
// seconds removing records, and none while the NATS connection is down;
// those it could not remove expire within the TTL, and the error says so. It does not close the NATS connection. Later
// calls return nil.
func (d *Discovery) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	recs := d.owned
	d.owned = nil
	d.mu.Unlock()

	// No refresh may run once the removals start.
	_ = d.tasks.Stop(context.Background())
	_ = d.created.Unsubscribe()

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	ctx, stop := d.whileConnected(ctx)
	defer stop()
	// Every record is tried; past the deadline, or once the connection is
	// lost, each fails at once and counts.
	if n, err := owned.RemoveAll(ctx, slices.Collect(maps.Values(recs)), d.remove); err != nil {
		err = disconnectedErr(ctx, err)
		return fmt.Errorf("natskv: close: %d of %d records not removed from bucket %q; they expire within %v: %w",
			n, len(recs), d.bucket, d.ttl, err)
	}
	return nil
}

// remove deletes r if the record is still the revision d last wrote: a
// record another client has registered since is not d's to remove.
func (d *Discovery) remove(ctx context.Context, r *record) error {
	d.mu.Lock()
	rev := r.rev
	d.mu.Unlock()
	err := d.tombstone(ctx, d.pre+r.key, rev, d.ttl)
	if err == nil || wrongLastSequence(err) {
		return nil
	}
	return fmt.Errorf("remove %s: %w", r.key, err)
}

// removeOwn removes a record that a Register racing with Close wrote.
func (d *Discovery) removeOwn(r *record) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := d.remove(ctx, r); err != nil {
		d.log.Warn("natskv: could not remove a record registered during Close; it expires with its TTL",
			"key", r.key, "ttl", d.ttl, "err", err)
	}
}

func (d *Discovery) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// refreshLoop rewrites the owned records every TTL/3, and at once after a
// reconnect, when they may be close to expiring.
func (d *Discovery) refreshLoop(ctx context.Context) error {
	reconnected := d.nc.StatusChanged(nats.CONNECTED)
	defer d.nc.RemoveStatusListener(reconnected)
	t := time.NewTicker(d.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-reconnected:
		}
		d.refresh(ctx)
	}
}

// refresh rewrites each owned record, within one refresh period.
func (d *Discovery) refresh(ctx context.Context) {
	if !d.nc.IsConnected() {
		return // the reconnect triggers a refresh
	}
	d.mu.Lock()
	recs := slices.Collect(maps.Values(d.owned))
	// Oldest write first (revisions grow with time), so that a round cut
	// short by its deadline leaves the freshest records for the next.
	slices.SortFunc(recs, func(a, b *record) int { return cmp.Compare(a.rev, b.rev) })
	d.mu.Unlock()
	if len(recs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, d.ttl/3)
	defer cancel()
	owned.ForEach(ctx, recs, func(r *record) { d.refreshRecord(ctx, r) })
}

// refreshRecord rewrites r if its latest revision is still the one d wrote,
// which resets its TTL; if not, it finds out what happened.
func (d *Discovery) refreshRecord(ctx context.Context, r *record) {
	d.mu.Lock()
	rev, ok := r.rev, d.owned[r.key] == r
	d.mu.Unlock()
	if !ok {
		return // unregistered meanwhile
	}
	// No retry if no stream answers: the bucket may be gone, and the
	// retries would take longer than a refresh round of a short TTL.
	rev, err := d.write(ctx, d.pre+r.key, r.value, rev, jetstream.WithRetryAttempts(0))
	switch {
	case err == nil:
		d.setRev(r, rev)
	case wrongLastSequence(err), d.restoreBucket(ctx, err):
		d.reclaim(ctx, r)
	default:
		d.log.Warn("natskv: refreshing a record failed; trying again", "key", r.key, "ttl", d.ttl, "err", err)
	}
}

// reclaim handles a record whose latest revision is not the one d wrote.
// A removal by another client or an operator, or a record of another
// owner, is respected: d stops refreshing it. A record that expired while
// d was alive (say, d's connection was down for longer than the TTL) is
// registered again.
func (d *Discovery) reclaim(ctx context.Context, r *record) {
	m, found, err := d.last(ctx, d.pre+r.key)
	switch {
	case err != nil:
		d.log.Warn("natskv: refreshing a record failed; trying again", "key", r.key, "err", err)
		return
	case !found:
		// Expired, and its marker has expired too.
	case m.header.Get(kvOperationHeader) != "":
		d.disown(r)
		d.log.Info("natskv: a record this client registered was unregistered by another; no longer refreshing it", "key", r.key)
		return
	case m.header.Get(jetstream.MarkerReasonHeader) == expiredReason:
		// Expired.
	case isMarker(m.header):
		d.disown(r)
		d.log.Warn("natskv: a record this client registered was removed from the stream; no longer refreshing it",
			"key", r.key, "reason", m.header.Get(jetstream.MarkerReasonHeader))
		return
	case m.header.Get(ownerHeader) == d.owner:
		// d's own refresh, applied but not acknowledged.
		d.setRev(r, m.seq)
		return
	default:
		d.disown(r)
		d.log.Warn("natskv: a record this client registered was replaced by another client's; no longer refreshing it", "key", r.key)
		return
	}
	rev, err := d.create(ctx, r.key, r.value)
	switch {
	case errors.Is(err, discovery.ErrDuplicate):
		d.disown(r)
		d.log.Warn("natskv: a record this client registered expired and another client registered the key; no longer refreshing it", "key", r.key)
	case err != nil:
		d.log.Warn("natskv: registering an expired record again failed; trying again", "key", r.key, "err", err)
	default:
		d.setRev(r, rev)
		d.log.Warn("natskv: a record expired while its owner was alive (NATS unreachable for longer than the TTL?); registered it again",
			"key", r.key, "ttl", d.ttl)
	}
}

func (d *Discovery) setRev(r *record, rev uint64) {
	d.mu.Lock()
	if d.owned[r.key] == r {
		r.rev = rev
	}
	d.mu.Unlock()
}

func (d *Discovery) disown(r *record) {
	d.mu.Lock()
	if d.owned[r.key] == r {
		delete(d.owned, r.key)
	}
	d.mu.Unlock()
}
