package objectstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/internal/jsstream"
)

// DefaultBucket is the bucket a Config without one uses (queue.object_bucket).
const DefaultBucket = "loom_payloads"

// ErrNotFound is wrapped by the errors of Get, Open, Info and Delete when
// the object does not exist (never stored, deleted, or expired).
var ErrNotFound = errors.New("objectstore: object not found")

// Config describes a bucket. The zero value is DefaultBucket on file
// storage with one replica, objects kept until deleted.
type Config struct {
	// Bucket is the bucket's name: 1 to 251 letters, digits, '-' and '_'.
	Bucket string
	// Storage is "file" (default) or "memory".
	Storage string
	// Replicas is the number of copies in a cluster; 0 means 1.
	Replicas int
	// TTL removes objects this long after they were stored; 0 keeps them
	// until deleted. Offloaded payloads of acknowledged jobs are deleted
	// at once; the TTL bounds what dead consumers and events leave behind.
	TTL time.Duration
	// MaxBytes bounds the bucket's size; 0 or less is no limit.
	MaxBytes int64
	// ChunkSize is the size of the messages an object is cut into; 0 is
	// nats.go's default (128 KiB, less if max_payload is smaller). Open
	// refuses one above the server's max_payload less 1 KiB kept for
	// headers; one under 1 KiB is taken as 1 KiB.
	ChunkSize int
}

// defaultChunk is nats.go's default chunk size; chunkReserve is room
// kept for a chunk's headers under max_payload.
const (
	defaultChunk = 128 << 10
	chunkReserve = 1 << 10
)

// Store is one bucket of the JetStream object store. It is safe for
// concurrent use. Object names are 1 to 1024 bytes, any bytes; its
// methods refuse others with an error naming the limit.
type Store struct {
	js     jetstream.JetStream
	obs    jetstream.ObjectStore
	bucket string
	chunk  int
}

// Open creates the bucket cfg describes, or updates it to cfg if it exists,
// and returns it. The server must have JetStream enabled.
func Open(ctx context.Context, nc *nats.Conn, cfg Config) (*Store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("objectstore: %w", err)
	}
	return open(ctx, js, cfg)
}

func open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if !bucketRE.MatchString(cfg.Bucket) {
		return nil, fmt.Errorf("objectstore: bucket name %q: use 1 to 251 letters, digits, '-' and '_'", cfg.Bucket)
	}
	storage, err := StorageType(cfg.Storage)
	if err != nil {
		return nil, err
	}
	// A chunk above max_payload fails every put with nats.go's "maximum
	// payload exceeded", which names neither the setting nor the limit.
	if mp := js.Conn().MaxPayload(); int64(cfg.ChunkSize) > mp-chunkReserve {
		return nil, fmt.Errorf("objectstore: bucket %s: ChunkSize %d is above the %d bytes a chunk may take (the server's max_payload of %d less %d kept for headers); lower it, or leave it 0 for the default",
			cfg.Bucket, cfg.ChunkSize, mp-chunkReserve, mp, chunkReserve)
	}
	replicas := max(cfg.Replicas, 1)
	maxBytes := cfg.MaxBytes
	if maxBytes <= 0 {
		maxBytes = -1
	}
	oc := jetstream.ObjectStoreConfig{
		Bucket:      cfg.Bucket,
		Description: "Loom: payloads above max_payload, carried by reference",
		TTL:         cfg.TTL,
		MaxBytes:    maxBytes,
		Storage:     storage,
		Replicas:    replicas,
	}
	// One rule for every stream Loom touches (internal/jsstream): create
	// the bucket when absent, keep an existing one's limits, warn with the
	// differences.
	obs, err := js.ObjectStore(ctx, cfg.Bucket)
	if err == nil {
		warnBucket(ctx, js, oc)
	} else if bucketGone(err) {
		obs, err = js.CreateObjectStore(ctx, oc)
		if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			obs, err = js.ObjectStore(ctx, cfg.Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("objectstore: create bucket %s: %w", cfg.Bucket, jsHint(err))
	}
	return &Store{js: js, obs: obs, bucket: cfg.Bucket, chunk: cfg.ChunkSize}, nil
}

// attach returns the existing bucket without changing its configuration.
func attach(ctx context.Context, js jetstream.JetStream, bucket string) (*Store, error) {
	obs, err := js.ObjectStore(ctx, bucket)
	if err != nil {
		if bucketGone(err) {
			return nil, fmt.Errorf("%w: bucket %s does not exist", ErrNotFound, bucket)
		}
		return nil, fmt.Errorf("objectstore: bucket %s: %w", bucket, jsHint(err))
	}
	return &Store{js: js, obs: obs, bucket: bucket}, nil
}

// StorageType maps "file" (or "") and "memory" to JetStream's storage types.
func StorageType(s string) (jetstream.StorageType, error) {
	switch s {
	case "", "file":
		return jetstream.FileStorage, nil
	case "memory":
		return jetstream.MemoryStorage, nil
	}
	return 0, fmt.Errorf("objectstore: storage %q: use file or memory", s)
}

// jsHint adds what to do to the errors a server without JetStream gives.
func jsHint(err error) error {
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Errorf("%w (start nats-server with -js, or `loom up`)", err)
	}
	return err
}

// Bucket returns the bucket's name.
func (s *Store) Bucket() string { return s.bucket }

// Put stores what r yields, until io.EOF, as the object name, replacing any
// object of that name, and returns a reference to it. It streams r in
// chunks; memory use does not grow with the object's size. If ctx ends
// before r is read to its end, or r fails, Put fails, wrapping the
// context's or r's error, and leaves the bucket as it was: no new object,
// no chunks of one, any object of that name kept. Once r is read to its
// end, Put waits for the server to confirm the object and reports what it
// says.
func (s *Store) Put(ctx context.Context, name string, r io.Reader) (Ref, error) {
	if err := s.checkName("put", name); err != nil {
		return Ref{}, err
	}
	if err := ctx.Err(); err != nil {
		return Ref{}, fmt.Errorf("objectstore: put %s/%s: %w", s.bucket, name, err)
	}
	meta := jetstream.ObjectMeta{Name: name}
	chunk := s.chunk
	if chunk <= 0 {
		// nats.go's default chunk, or less if the server's max_payload is
		// smaller, leaving room for the chunk's headers.
		chunk = int(min(defaultChunk, s.js.Conn().MaxPayload()-chunkReserve))
	}
	meta.Opts = &jetstream.ObjectMetaOptions{ChunkSize: uint32(max(chunk, 1024))}
	// nats.go removes the chunks of a failed put under the put's own
	// context: once that has ended the removal fails, and the chunks sent
	// stay in the bucket for good, unreadable and counted against
	// MaxBytes. So ctx ends the put through the reader, and the context
	// nats.go holds stays alive for the removal; each of its requests is
	// still bounded by the JetStream timeout.
	info, err := s.obs.Put(context.WithoutCancel(ctx), meta, ctxReader{ctx, r})
	if err != nil {
		return Ref{}, fmt.Errorf("objectstore: put %s/%s: %w", s.bucket, name, err)
	}
	return Ref{Bucket: s.bucket, Name: name, Size: int64(info.Size), Digest: info.Digest}, nil
}

// ctxReader fails its reads once ctx has ended.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Get writes the object name to w, checking its SHA-256 digest at the end,
// and returns its reference. A digest mismatch is an error after w has
// received the bytes; write to a temporary place if that matters.
func (s *Store) Get(ctx context.Context, name string, w io.Writer) (Ref, error) {
	rc, ref, err := s.Open(ctx, name)
	if err != nil {
		return Ref{}, err
	}
	defer rc.Close()
	if _, err := io.Copy(w, rc); err != nil {
		if errors.As(err, new(readError)) {
			return Ref{}, err
		}
		return Ref{}, fmt.Errorf("objectstore: get %s/%s: %w", s.bucket, name, err)
	}
	return ref, nil
}

// Open returns a reader of the object name, which checks the digest when it
// reaches the end, and the object's reference. The caller must Close it.
// The read takes as long as the object needs and ends with ctx. A read
// that stops getting chunks for a while asks why: an object replaced or
// deleted meanwhile, or whose chunks are gone, is an error saying so.
func (s *Store) Open(ctx context.Context, name string) (io.ReadCloser, Ref, error) {
	if err := s.checkName("get", name); err != nil {
		return nil, Ref{}, err
	}
	info, err := s.obs.GetInfo(ctx, name)
	if err != nil {
		return nil, Ref{}, s.notFound(name, err)
	}
	if info.Opts != nil && info.Opts.Link != nil {
		// A link (made with the nats CLI, not by Loom): nats.go follows it.
		return s.openLink(ctx, name)
	}
	ref := Ref{Bucket: s.bucket, Name: name, Size: int64(info.Size), Digest: info.Digest}
	r := &objectReader{s: s, ctx: ctx, info: info, hash: sha256.New()}
	if info.Size == 0 {
		return r, ref, nil
	}
	// nats.go's own Get gives a context without a deadline one of 5 s
	// for the whole read: any object that took longer to read failed
	// with "nats: timeout". This reads the chunks with a consumer of its
	// own, bounded only by ctx.
	chunk := defaultChunk
	if info.Opts != nil && info.Opts.ChunkSize > 0 {
		chunk = int(info.Opts.ChunkSize)
	}
	r.cons, err = s.js.OrderedConsumer(ctx, "OBJ_"+s.bucket, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{r.chunkSubject()},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		// Close deletes the consumer; this is for a reader never closed.
		InactiveThreshold: 30 * time.Second,
	})
	if err != nil {
		return nil, Ref{}, fmt.Errorf("objectstore: get %s/%s: %w", s.bucket, name, err)
	}
	// A few chunks ahead: memory does not grow with the object.
	if r.it, err = r.cons.Messages(jetstream.PullMaxBytes(max(4<<20, 4*chunk))); err != nil {
		r.Close()
		return nil, Ref{}, fmt.Errorf("objectstore: get %s/%s: %w", s.bucket, name, err)
	}
	return r, ref, nil
}

func (s *Store) openLink(ctx context.Context, name string) (io.ReadCloser, Ref, error) {
	res, err := s.obs.Get(ctx, name)
	if err != nil {
		return nil, Ref{}, s.notFound(name, err)
	}
	info, err := res.Info()
	if err != nil {
		res.Close()
		return nil, Ref{}, fmt.Errorf("objectstore: get %s/%s: %w", s.bucket, name, err)
	}
	return res, Ref{Bucket: s.bucket, Name: name, Size: int64(info.Size), Digest: info.Digest}, nil
}

// stallCheck is how long a read waits for a chunk before it asks why none
// came.
const stallCheck = 5 * time.Second

// objectReader reads an object's chunks in order, and checks their size
// and digest against the object's metadata at the end.
type objectReader struct {
	s    *Store
	ctx  context.Context
	info *jetstream.ObjectInfo
	cons jetstream.Consumer        // nil for an empty object
	it   jetstream.MessagesContext // nil for an empty object
	hash hash.Hash
	buf  []byte // what is left of the last chunk
	read uint64 // bytes of chunks received
	err  error  // sticky: io.EOF at the end
}

func (r *objectReader) chunkSubject() string {
	return "$O." + r.s.bucket + ".C." + r.info.NUID
}

func (r *objectReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.it == nil {
			r.err = r.finish()
			continue
		}
		msg, err := r.next()
		if err != nil {
			r.err = readError{err}
			continue
		}
		r.buf = msg.Data()
		r.hash.Write(r.buf)
		r.read += uint64(len(r.buf))
		if md, err := msg.Metadata(); err == nil && md.NumPending == 0 {
			r.err = r.finish() // after the data in buf
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// finish checks the chunks received against the object's metadata.
func (r *objectReader) finish() error {
	want, err := jetstream.DecodeObjectDigest(r.info.Digest)
	if err == nil && r.read == r.info.Size && bytes.Equal(r.hash.Sum(nil), want) {
		return io.EOF
	}
	return readError{fmt.Errorf("objectstore: get %s/%s: %d bytes with digest %s, the object's metadata says %d bytes with %s: %w",
		r.s.bucket, r.info.Name, r.read, jetstream.GetObjectDigestValue(r.hash), r.info.Size, r.info.Digest, jetstream.ErrDigestMismatch)}
}

// next returns the next chunk, asking why when none comes for a while.
func (r *objectReader) next() (jetstream.Msg, error) {
	for {
		ctx, cancel := context.WithTimeout(r.ctx, stallCheck)
		msg, err := r.it.Next(jetstream.NextContext(ctx))
		cancel()
		switch {
		case err == nil:
			return msg, nil
		case r.ctx.Err() != nil:
			return nil, fmt.Errorf("objectstore: get %s/%s: %w", r.s.bucket, r.info.Name, r.ctx.Err())
		case !errors.Is(err, context.DeadlineExceeded):
			return nil, fmt.Errorf("objectstore: get %s/%s: %w", r.s.bucket, r.info.Name, err)
		}
		if err := r.stalled(); err != nil {
			return nil, err
		}
	}
}

// stalled says why no chunk came, or nil if the object is whole and its
// chunks are merely slow.
func (r *objectReader) stalled() error {
	ctx, cancel := context.WithTimeout(r.ctx, stallCheck)
	defer cancel()
	name := r.s.bucket + "/" + r.info.Name
	info, err := r.s.obs.GetInfo(ctx, r.info.Name)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return fmt.Errorf("%w: %s was deleted while being read", ErrNotFound, name)
	case err != nil:
		return fmt.Errorf("objectstore: get %s: no chunk for %s, and the server does not say why: %w", name, stallCheck, err)
	case info.NUID != r.info.NUID:
		return fmt.Errorf("objectstore: get %s: the object was replaced while being read; read it again", name)
	}
	st, err := r.s.js.Stream(ctx, "OBJ_"+r.s.bucket)
	if err != nil {
		return fmt.Errorf("objectstore: get %s: no chunk for %s, and the server does not say why: %w", name, stallCheck, err)
	}
	si, err := st.Info(ctx, jetstream.WithSubjectFilter(r.chunkSubject()))
	if err != nil {
		return fmt.Errorf("objectstore: get %s: no chunk for %s, and the server does not say why: %w", name, stallCheck, err)
	}
	if have := si.State.Subjects[r.chunkSubject()]; have < uint64(info.Chunks) {
		return fmt.Errorf("objectstore: get %s: %d of the object's %d chunks are gone (expired by the bucket's TTL?)", name, uint64(info.Chunks)-have, info.Chunks)
	}
	return nil
}

// Close stops the read and deletes its consumer.
func (r *objectReader) Close() error {
	if r.it != nil {
		r.it.Stop()
	}
	if r.cons != nil {
		if ci := r.cons.CachedInfo(); ci != nil {
			ctx, cancel := context.WithTimeout(context.Background(), stallCheck)
			_ = r.s.js.DeleteConsumer(ctx, "OBJ_"+r.s.bucket, ci.Name)
			cancel()
		}
		r.cons = nil
	}
	if r.err == nil {
		r.err = readError{fmt.Errorf("objectstore: get %s/%s: read after Close", r.s.bucket, r.info.Name)}
	}
	return nil
}

// readError is an objectReader's error, which names the object already.
type readError struct{ error }

func (e readError) Unwrap() error { return e.error }

// Info returns the reference of the object name without reading it.
func (s *Store) Info(ctx context.Context, name string) (Ref, error) {
	if err := s.checkName("info", name); err != nil {
		return Ref{}, err
	}
	info, err := s.obs.GetInfo(ctx, name)
	if err != nil {
		return Ref{}, s.notFound(name, err)
	}
	return Ref{Bucket: s.bucket, Name: name, Size: int64(info.Size), Digest: info.Digest}, nil
}

// Delete removes the object name. Deleting an object that does not exist
// is an error wrapping ErrNotFound.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := s.checkName("delete", name); err != nil {
		return err
	}
	if err := s.obs.Delete(ctx, name); err != nil {
		return s.notFound(name, err)
	}
	return nil
}

// checkName refuses an object name before it reaches the server. nats.go
// puts the name, in base64, in the subjects of the requests about the
// object: one past the server's max_control_line (4 KiB by default) makes
// the server close the connection, which every plane of the process
// shares. The bound is ParseRef's, so that every Ref that Put returns
// travels.
func (s *Store) checkName(op, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("objectstore: %s in bucket %s: the object name is empty; give the object a name", op, s.bucket)
	case len(name) > maxNameLen:
		return fmt.Errorf("objectstore: %s %s/%.32s...: the object name is %d bytes, above the %d bytes a name may take; use a shorter name", op, s.bucket, name, len(name), maxNameLen)
	}
	return nil
}

func (s *Store) notFound(name string, err error) error {
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("%w: %s/%s (deleted, expired by the bucket's TTL, or never stored)", ErrNotFound, s.bucket, name)
	}
	return fmt.Errorf("objectstore: %s/%s: %w", s.bucket, name, err)
}

// warnBucket logs the limits of an existing bucket that differ from oc.
func warnBucket(ctx context.Context, js jetstream.JetStream, oc jetstream.ObjectStoreConfig) {
	st, err := js.Stream(ctx, "OBJ_"+oc.Bucket)
	if err != nil {
		return
	}
	have := st.CachedInfo().Config
	want := have
	want.MaxAge, want.MaxBytes, want.Storage, want.Replicas = oc.TTL, oc.MaxBytes, oc.Storage, oc.Replicas
	if diffs := jsstream.Compare(have, want); len(diffs) > 0 {
		parts := make([]string, len(diffs))
		for i, d := range diffs {
			parts[i] = d.String()
		}
		slog.Warn(fmt.Sprintf("object store bucket %s exists with settings that differ from this process's; keeping the bucket's (change them with `nats object edit %s`)", oc.Bucket, oc.Bucket),
			"bucket", oc.Bucket, "differences", strings.Join(parts, ", "))
	}
}
