package objectstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/objectstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func connect(t *testing.T) *nats.Conn {
	t.Helper()
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// source yields n pseudo-random bytes without holding them.
func source(n int64, seed uint64) io.Reader {
	r := rand.New(rand.NewPCG(seed, seed))
	return io.LimitReader(readerFunc(func(p []byte) (int, error) {
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		return len(p), nil
	}), n)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestPutAndGetStreamObjectsLargerThanMaxPayload(t *testing.T) {
	nc := connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := objectstore.Open(ctx, nc, objectstore.Config{Bucket: "big", Storage: "memory"})
	if err != nil {
		t.Fatal(err)
	}
	const size = 12 << 20 // twelve times the default max_payload
	want := sha256.New()
	ref, err := st.Put(ctx, "model/weights.bin", io.TeeReader(source(size, 1), want))
	if err != nil {
		t.Fatal(err)
	}
	if ref.Size != size || ref.Bucket != "big" || !strings.HasPrefix(ref.Digest, "SHA-256=") {
		t.Fatalf("ref %+v", ref)
	}
	got := sha256.New()
	if _, err := st.Get(ctx, "model/weights.bin", got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("the object read back differs from what was put")
	}
	if err := st.Delete(ctx, "model/weights.bin"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, "model/weights.bin", io.Discard); !errors.Is(err, objectstore.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
}

func TestResolveChecksTheReferenceAgainstTheObject(t *testing.T) {
	nc := connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	off, err := objectstore.NewOffloader(nc, js, objectstore.OffloadConfig{
		Bucket: objectstore.Config{Bucket: "refs", Storage: "memory"}, Limit: 4096, MaxObjectSize: 1 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	m := &nats.Msg{Subject: "x", Data: bytes.Repeat([]byte("p"), 10_000)}
	ref, err := off.Prepare(ctx, m, "test", "test payload")
	if err != nil || ref == nil || len(m.Data) != 0 || m.Header.Get(objectstore.RefHeader) == "" {
		t.Fatalf("Prepare: ref %v, err %v, %d bytes left in the body", ref, err, len(m.Data))
	}
	body, got, err := off.Resolve(ctx, m.Header, m.Data)
	if err != nil || len(body) != 10_000 || got.Name != ref.Name {
		t.Fatalf("Resolve: %d bytes, %v, %v", len(body), got, err)
	}
	small := &nats.Msg{Subject: "x", Data: []byte("fits")}
	if r, err := off.Prepare(ctx, small, "test", "small"); r != nil || err != nil || string(small.Data) != "fits" {
		t.Fatalf("a small payload was changed: %v %v", r, err)
	}

	bad := func(mutate func(r *objectstore.Ref)) error {
		r := *ref
		mutate(&r)
		_, _, err := off.Resolve(ctx, nats.Header{objectstore.RefHeader: {r.String()}}, nil)
		return err
	}
	for name, mutate := range map[string]func(*objectstore.Ref){
		"a size that differs":       func(r *objectstore.Ref) { r.Size = 9_999 },
		"a digest that differs":     func(r *objectstore.Ref) { r.Digest = "SHA-256=" + strings.Repeat("A", 43) + "=" },
		"a size above the limit":    func(r *objectstore.Ref) { r.Size = 1 << 40 },
		"an object that is missing": func(r *objectstore.Ref) { r.Name = "test/none" },
	} {
		if err := bad(mutate); !errors.Is(err, objectstore.ErrBadRef) && !errors.Is(err, objectstore.ErrNotFound) {
			t.Errorf("Resolve of a reference with %s: %v; want ErrBadRef or ErrNotFound", name, err)
		}
	}
}

func TestRefRoundTrips(t *testing.T) {
	ref := objectstore.Ref{Bucket: "loom_payloads", Name: "queue/a b&c=d", Size: 123, Digest: "SHA-256=" + strings.Repeat("A", 43) + "="}
	got, err := objectstore.ParseRef(ref.String())
	if err != nil || got != ref {
		t.Fatalf("ParseRef(%q) = %+v, %v", ref.String(), got, err)
	}
	for _, bad := range []string{"", "v=2&bucket=b&name=n&size=1", "v=1&bucket=b.c&name=n&size=1", "v=1&bucket=b&name=&size=1",
		"v=1&bucket=b&name=n&size=-1", "v=1&bucket=b&name=n&size=1&size=2", "v=1&bucket=b&name=n&size=1&digest=MD5=x", "v=1&bucket=b&name=n&size=1&extra=1"} {
		if _, err := objectstore.ParseRef(bad); !errors.Is(err, objectstore.ErrBadRef) {
			t.Errorf("ParseRef(%q): %v, want ErrBadRef", bad, err)
		}
	}
}

// FuzzParseRef: a reference header comes from the network.
func FuzzParseRef(f *testing.F) {
	f.Add(objectstore.Ref{Bucket: "b", Name: "n", Size: 1, Digest: "SHA-256=" + strings.Repeat("A", 43) + "="}.String())
	f.Add("v=1&bucket=b&name=%zz&size=1")
	f.Add("v=1&bucket=b&name=n&size=99999999999999999999")
	f.Add(strings.Repeat("v=1&", 600))
	f.Fuzz(func(t *testing.T, s string) {
		ref, err := objectstore.ParseRef(s)
		if err != nil {
			if !errors.Is(err, objectstore.ErrBadRef) {
				t.Fatalf("error %v does not wrap ErrBadRef", err)
			}
			return
		}
		again, err := objectstore.ParseRef(ref.String())
		if err != nil || again != ref {
			t.Fatalf("%+v does not round-trip: %+v, %v", ref, again, err)
		}
	})
}

// TestOffloadAfterTheBucketWentAway: a bucket lost while the process runs
// (a server with memory storage restarted, an operator removed it) is
// made again by the next payload that needs it, as work queues and
// EventBuses make their streams again; before, every large payload failed
// until the process restarted.
func TestOffloadAfterTheBucketWentAway(t *testing.T) {
	nc := connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	off, err := objectstore.NewOffloader(nc, js, objectstore.OffloadConfig{
		Bucket: objectstore.Config{Bucket: "lost", Storage: "memory"}, Limit: 4096,
	})
	if err != nil {
		t.Fatal(err)
	}
	prepare := func() *objectstore.Ref {
		t.Helper()
		m := &nats.Msg{Subject: "x", Data: bytes.Repeat([]byte("p"), 10_000)}
		ref, err := off.Prepare(ctx, m, "test", "test payload")
		if err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		body, _, err := off.Resolve(ctx, m.Header, m.Data)
		if err != nil || len(body) != 10_000 {
			t.Fatalf("Resolve: %d bytes, %v", len(body), err)
		}
		return ref
	}
	prepare()
	if err := js.DeleteObjectStore(ctx, "lost"); err != nil {
		t.Fatal(err)
	}
	ref := prepare()
	if _, err := js.ObjectStore(ctx, "lost"); err != nil {
		t.Fatalf("the bucket was not made again: %v", err)
	}
	// An object whose bucket went away is lost for good: its reference
	// is refused as not found, which dead-letters the job at once.
	if err := js.DeleteObjectStore(ctx, "lost"); err != nil {
		t.Fatal(err)
	}
	_, _, err = off.Resolve(ctx, nats.Header{objectstore.RefHeader: {ref.String()}}, nil)
	if !errors.Is(err, objectstore.ErrNotFound) || !strings.Contains(err.Error(), "bucket does not exist") {
		t.Fatalf("Resolve of an object whose bucket went away: %v; want ErrNotFound saying the bucket does not exist", err)
	}
}

// stored returns how many messages (chunks and metadata) bucket holds.
func stored(t *testing.T, nc *nats.Conn, bucket string) uint64 {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(t.Context(), "OBJ_"+bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// endAfter yields r and, once it has yielded n bytes, ends ctx with end
// and waits for it to be done, as a put given up half way.
type endAfter struct {
	r   io.Reader
	n   int64
	ctx context.Context
	end func()
}

func (e *endAfter) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if e.n -= int64(n); e.n <= 0 {
		e.end()
		<-e.ctx.Done()
	}
	return n, err
}

// TestAPutWhoseContextEndsLeavesTheBucketAsItWas: nats.go removed the
// chunks of a failed put under the put's own context, which had ended, so
// every put cancelled or timed out half way left its chunks in the bucket
// for good: unreadable, never expired without a TTL, counted against
// MaxBytes until the bucket refused every put.
func TestAPutWhoseContextEndsLeavesTheBucketAsItWas(t *testing.T) {
	nc := connect(t)
	st, err := objectstore.Open(t.Context(), nc, objectstore.Config{Bucket: "ended", Storage: "memory"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(t.Context(), "x", strings.NewReader("the first version")); err != nil {
		t.Fatal(err)
	}
	before := stored(t, nc, "ended")
	for _, tt := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		end  func(cancel context.CancelFunc)
		want error
	}{
		{name: "cancelled",
			ctx:  func() (context.Context, context.CancelFunc) { return context.WithCancel(t.Context()) },
			end:  func(cancel context.CancelFunc) { cancel() },
			want: context.Canceled},
		{name: "past its deadline",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(t.Context(), 300*time.Millisecond)
			},
			end:  func(context.CancelFunc) {},
			want: context.DeadlineExceeded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			r := &endAfter{r: source(4<<20, 1), n: 1 << 20, ctx: ctx, end: func() { tt.end(cancel) }}
			if _, err := st.Put(ctx, "x", r); !errors.Is(err, tt.want) {
				t.Fatalf("Put: %v; want an error wrapping %v", err, tt.want)
			}
			if n := stored(t, nc, "ended"); n != before {
				t.Errorf("the bucket holds %d messages after the failed put, %d before", n, before)
			}
			var got bytes.Buffer
			if _, err := st.Get(t.Context(), "x", &got); err != nil || got.String() != "the first version" {
				t.Errorf("Get after the failed put: %q, %v; want the first version", got.String(), err)
			}
		})
	}
}

// TestObjectNamesTheServerCannotTakeAreRefusedAndTheConnectionStays: a
// name goes, in base64, into the subjects of the requests about its object.
// A long one made the server close the connection, which every plane of
// the process shares, with "maximum control line exceeded"; an empty one
// failed with nats.go's "object-store meta information invalid".
func TestObjectNamesTheServerCannotTakeAreRefusedAndTheConnectionStays(t *testing.T) {
	nc := connect(t)
	// The longest bucket name, for the longest subjects.
	bucket := strings.Repeat("b", 251)
	st, err := objectstore.Open(t.Context(), nc, objectstore.Config{Bucket: bucket, Storage: "memory"})
	if err != nil {
		t.Fatal(err)
	}
	longest := strings.Repeat("n", 1024)
	ref, err := st.Put(t.Context(), longest, strings.NewReader("payload"))
	if err != nil {
		t.Fatalf("Put of a %d-byte name: %v", len(longest), err)
	}
	if _, err := objectstore.ParseRef(ref.String()); err != nil {
		t.Errorf("the reference Put returned does not parse: %v", err)
	}
	if _, err := st.Info(t.Context(), longest); err != nil {
		t.Errorf("Info of a %d-byte name: %v", len(longest), err)
	}
	if err := st.Delete(t.Context(), longest); err != nil {
		t.Errorf("Delete of a %d-byte name: %v", len(longest), err)
	}

	tooLong := strings.Repeat("n", 5000)
	for _, tt := range []struct {
		name, want string
	}{
		{"", "the object name is empty"},
		{tooLong, "the object name is 5000 bytes, above the 1024 bytes a name may take"},
	} {
		for op, call := range map[string]func() error{
			"put":    func() error { _, err := st.Put(t.Context(), tt.name, strings.NewReader("payload")); return err },
			"get":    func() error { _, err := st.Get(t.Context(), tt.name, io.Discard); return err },
			"info":   func() error { _, err := st.Info(t.Context(), tt.name); return err },
			"delete": func() error { return st.Delete(t.Context(), tt.name) },
		} {
			err := call()
			if err == nil || !strings.Contains(err.Error(), "objectstore: "+op) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s of a %d-byte name: %v; want it to say %q", op, len(tt.name), err, tt.want)
			}
			if !nc.IsConnected() {
				t.Fatalf("%s of a %d-byte name closed the connection: %v", op, len(tt.name), nc.LastError())
			}
		}
	}
	if _, err := st.Put(t.Context(), "after", strings.NewReader("payload")); err != nil {
		t.Errorf("Put after the refused names: %v", err)
	}
}

// TestBucketNamesAreCheckedAgainstTheServersLimit: the bucket's stream is
// "OBJ_" and its name, and a stream name takes at most 255 bytes. A name
// of 252 to 255 characters passed Loom's check and failed at the server
// with "stream name is too long, maximum allowed is 255", a limit the
// bucket name was within.
func TestBucketNamesAreCheckedAgainstTheServersLimit(t *testing.T) {
	nc := connect(t)
	for _, tt := range []struct {
		bucket string
		want   string
	}{
		{strings.Repeat("b", 251), ""},
		{strings.Repeat("b", 252), "use 1 to 251 letters, digits, '-' and '_'"},
		{"a.b", "use 1 to 251 letters, digits, '-' and '_'"},
	} {
		_, err := objectstore.Open(t.Context(), nc, objectstore.Config{Bucket: tt.bucket, Storage: "memory"})
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("Open of a %d-character bucket name: %v", len(tt.bucket), err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("Open of a %d-character bucket name: %v; want it to say %q", len(tt.bucket), err, tt.want)
		}
		ref := objectstore.Ref{Bucket: tt.bucket, Name: "n", Size: 1}
		if _, err := objectstore.ParseRef(ref.String()); (err == nil) != (tt.want == "") {
			t.Errorf("ParseRef of a reference to a %d-character bucket name: %v", len(tt.bucket), err)
		}
	}
}

// TestAChunkSizeAboveMaxPayloadIsRefusedByOpen: Open took any ChunkSize,
// and every Put into a bucket opened with one above the server's
// max_payload failed with "maximum payload exceeded", naming neither the
// setting nor the limit.
func TestAChunkSizeAboveMaxPayloadIsRefusedByOpen(t *testing.T) {
	nc := connect(t)
	limit := int(nc.MaxPayload()) - 1024
	st, err := objectstore.Open(t.Context(), nc, objectstore.Config{Bucket: "chunks", Storage: "memory", ChunkSize: limit})
	if err != nil {
		t.Fatalf("Open with ChunkSize %d: %v", limit, err)
	}
	if _, err := st.Put(t.Context(), "x", source(3*int64(limit), 1)); err != nil {
		t.Fatalf("Put in chunks of %d bytes: %v", limit, err)
	}
	_, err = objectstore.Open(t.Context(), nc, objectstore.Config{Bucket: "chunks", Storage: "memory", ChunkSize: 2 << 20})
	if err == nil || !strings.Contains(err.Error(), "ChunkSize 2097152 is above") || !strings.Contains(err.Error(), "max_payload of 1048576") {
		t.Fatalf("Open with ChunkSize 2 MiB: %v; want an error naming ChunkSize and max_payload", err)
	}
}

// TestAnObjectWhoseChunksChangedIsAnErrorNotData checks what the package
// doc promises: the digest is checked on the way out, so an object whose
// stored chunks were altered or cut short (a disk fault, a stream edited
// by hand) is an error from Get and Resolve, never bytes handed on as the
// object.
func TestAnObjectWhoseChunksChangedIsAnErrorNotData(t *testing.T) {
	nc := connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	off, err := objectstore.NewOffloader(nc, js, objectstore.OffloadConfig{
		Bucket: objectstore.Config{Bucket: "altered", Storage: "memory", ChunkSize: 4096}, Limit: 4096,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		alter func(chunks [][]byte) [][]byte
	}{
		{"a byte flipped", func(c [][]byte) [][]byte { c[1][7] ^= 0xff; return c }},
		{"the last chunk gone", func(c [][]byte) [][]byte { return c[:len(c)-1] }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := &nats.Msg{Subject: "x", Data: bytes.Repeat([]byte("payload!"), 2000)}
			ref, err := off.Prepare(t.Context(), m, "test", "test payload")
			if err != nil || ref == nil {
				t.Fatalf("Prepare: %v, %v", ref, err)
			}
			obs, err := js.ObjectStore(t.Context(), "altered")
			if err != nil {
				t.Fatal(err)
			}
			info, err := obs.GetInfo(t.Context(), ref.Name)
			if err != nil {
				t.Fatal(err)
			}
			// Read the chunks, then store them again, altered, in place.
			subject := "$O.altered.C." + info.NUID
			stream, err := js.Stream(t.Context(), "OBJ_altered")
			if err != nil {
				t.Fatal(err)
			}
			var chunks [][]byte
			for seq := uint64(1); len(chunks) < int(info.Chunks); seq++ {
				msg, err := stream.GetMsg(t.Context(), seq)
				if errors.Is(err, jetstream.ErrMsgNotFound) {
					continue // purged by an earlier case
				}
				if err != nil {
					t.Fatalf("chunk at sequence %d: %v", seq, err)
				}
				if msg.Subject == subject {
					chunks = append(chunks, msg.Data)
				}
			}
			if err := stream.Purge(t.Context(), jetstream.WithPurgeSubject(subject)); err != nil {
				t.Fatal(err)
			}
			for _, c := range tt.alter(chunks) {
				if _, err := js.Publish(t.Context(), subject, c); err != nil {
					t.Fatal(err)
				}
			}

			st, err := objectstore.Open(t.Context(), nc, objectstore.Config{Bucket: "altered", Storage: "memory"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Get(t.Context(), ref.Name, io.Discard); !errors.Is(err, jetstream.ErrDigestMismatch) {
				t.Errorf("Get: %v; want an error wrapping jetstream.ErrDigestMismatch", err)
			}
			if body, _, err := off.Resolve(t.Context(), m.Header, m.Data); err == nil {
				t.Errorf("Resolve handed on %d bytes of an altered object without an error", len(body))
			}
		})
	}
}

// TestAnObjectReplacedOrDeletedWhileBeingReadIsNamedAsSuch: an object's
// chunks are read from their subject. Replaced or deleted during the
// read, the object's chunks were removed and the read waited for the
// rest, then failed with "nats: timeout", naming neither the object nor
// the cause, and not wrapping the context's error when its deadline was
// what ended the read. The server sends a reader that does not read at
// most a few MiB ahead: an object of 8 MiB is mostly still to come.
func TestAnObjectReplacedOrDeletedWhileBeingReadIsNamedAsSuch(t *testing.T) {
	nc := connect(t)
	st, err := objectstore.Open(t.Context(), nc, objectstore.Config{Bucket: "moving", Storage: "memory"})
	if err != nil {
		t.Fatal(err)
	}
	const size = 8 << 20
	for _, tt := range []struct {
		name    string
		timeout time.Duration // of the read's context; 0 is none
		change  func() error
		want    string
		is      error
	}{
		{name: "replaced",
			change: func() error { _, err := st.Put(t.Context(), "x", strings.NewReader("v2")); return err },
			want:   "objectstore: get moving/x: the object was replaced while being read; read it again"},
		{name: "deleted",
			change: func() error { return st.Delete(t.Context(), "x") },
			want:   "moving/x was deleted while being read", is: objectstore.ErrNotFound},
		{name: "deleted, read with a deadline that comes first", timeout: time.Second,
			change: func() error { return st.Delete(t.Context(), "x") },
			want:   "objectstore: get moving/x: context deadline exceeded", is: context.DeadlineExceeded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := st.Put(t.Context(), "x", source(size, 1)); err != nil {
				t.Fatal(err)
			}
			ctx := t.Context()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			rc, _, err := st.Open(ctx, "x")
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			if err := tt.change(); err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, rc)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("reading on (%d more bytes): %v; want it to say %q", n, err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("reading on: %v; want it to wrap %v", err, tt.is)
			}
			t.Log(err)
		})
	}
}

// TestAReadLongerThanTheJetStreamTimeoutCompletes: nats.go's object Get
// gives a context without a deadline one of 5 s (its JetStream timeout)
// for the whole read, so a Get or Open of an object that took longer to
// read (a large object, a slow writer, a slow link) failed half way with
// "nats: timeout", though every chunk was on its way.
func TestAReadLongerThanTheJetStreamTimeoutCompletes(t *testing.T) {
	nc := connect(t)
	st, err := objectstore.Open(t.Context(), nc, objectstore.Config{Bucket: "slow", Storage: "memory"})
	if err != nil {
		t.Fatal(err)
	}
	const size = 4 << 20
	want := sha256.New()
	if _, err := st.Put(t.Context(), "x", io.TeeReader(source(size, 1), want)); err != nil {
		t.Fatal(err)
	}
	// The writer holds the read up past the 5 s: the time itself is
	// what is tested.
	got := sha256.New()
	w := &heldWriter{w: got, hold: time.After(6 * time.Second)}
	ref, err := st.Get(t.Context(), "x", w)
	if err != nil {
		t.Fatalf("Get of an object read in more than 5 s: %v", err)
	}
	if ref.Size != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("Get returned %+v and other bytes than were put", ref)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(t.Context(), "OBJ_slow")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := stream.Info(t.Context()); err != nil || info.State.Consumers != 0 {
		t.Errorf("the bucket's stream has %d consumers after the Get (%v); want none", info.State.Consumers, err)
	}
}

// heldWriter holds its first write until hold fires.
type heldWriter struct {
	w    io.Writer
	hold <-chan time.Time
}

func (h *heldWriter) Write(p []byte) (int, error) {
	if h.hold != nil {
		<-h.hold
		h.hold = nil
	}
	return h.w.Write(p)
}

// TestObjectsAtTheEdgesOfAChunkRoundTrip: an empty object has no chunk to
// read, and one of a chunk and a byte ends on a chunk of one byte.
func TestObjectsAtTheEdgesOfAChunkRoundTrip(t *testing.T) {
	nc := connect(t)
	st, err := objectstore.Open(t.Context(), nc, objectstore.Config{Bucket: "edges", Storage: "memory", ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 1, 4095, 4096, 4097, 3 * 4096} {
		want := strings.Repeat("e", size)
		if _, err := st.Put(t.Context(), "x", strings.NewReader(want)); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if ref, err := st.Get(t.Context(), "x", &got); err != nil || ref.Size != int64(size) || got.String() != want {
			t.Errorf("Get of %d bytes: %d bytes, %+v, %v", size, got.Len(), ref, err)
		}
	}
}

// TestAForgedReferenceReadsAndDeletesNothing: a reference comes from
// whoever may publish on the subject, and the object a resolved job's
// reference names is deleted after its ack. Resolve read any object of any
// bucket the consumer could reach given its name and size (the digest was
// optional), and Delete removed objects of any bucket: one forged job
// could take an application's object as its payload, and one that named
// it with its digest (published, for model weights) deleted it.
func TestAForgedReferenceReadsAndDeletesNothing(t *testing.T) {
	nc := connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	models, err := objectstore.Open(t.Context(), nc, objectstore.Config{Bucket: "models", Storage: "memory"})
	if err != nil {
		t.Fatal(err)
	}
	weights, err := models.Put(t.Context(), "weights", strings.NewReader("the application's own object"))
	if err != nil {
		t.Fatal(err)
	}
	off, err := objectstore.NewOffloader(nc, js, objectstore.OffloadConfig{
		Bucket: objectstore.Config{Bucket: "payloads", Storage: "memory"}, Limit: 4096,
	})
	if err != nil {
		t.Fatal(err)
	}
	m := &nats.Msg{Subject: "x", Data: bytes.Repeat([]byte("p"), 10_000)}
	job, err := off.Prepare(t.Context(), m, "q", "job for queue q")
	if err != nil {
		t.Fatal(err)
	}

	for _, ref := range []objectstore.Ref{weights, *job} {
		ref.Digest = ""
		body, _, err := off.Resolve(t.Context(), nats.Header{objectstore.RefHeader: {ref.String()}}, nil)
		if !errors.Is(err, objectstore.ErrBadRef) || !strings.Contains(err.Error(), "the reference carries no digest") {
			t.Errorf("Resolve of %s/%s without a digest: %d bytes, %v; want ErrBadRef saying it carries no digest", ref.Bucket, ref.Name, len(body), err)
		}
	}
	err = off.Delete(t.Context(), weights)
	if !errors.Is(err, objectstore.ErrBadRef) || !strings.Contains(err.Error(), "models/weights is not in bucket payloads") {
		t.Errorf("Delete of another bucket's object: %v; want ErrBadRef naming both buckets", err)
	}
	if _, err := models.Info(t.Context(), "weights"); err != nil {
		t.Errorf("the application's object after the forged references: %v", err)
	}
	if body, _, err := off.Resolve(t.Context(), m.Header, m.Data); err != nil || len(body) != 10_000 {
		t.Errorf("Resolve of the job's own reference: %d bytes, %v", len(body), err)
	}
	if err := off.Delete(t.Context(), *job); err != nil {
		t.Errorf("Delete of the job's own object: %v", err)
	}
}

// TestAHangingBucketLookupHoldsUpNoOtherResolve: Resolve of a reference
// to a bucket not yet known asks the server for it. That request once
// held the Offloader's lock, so one lookup that hangs (a server slow to
// answer; here one that drops the request, as it does for a NATS user who
// may not ask about that bucket) held up every offload and resolve of the
// process, even of buckets already known, until its context ended. Now
// the others, of a known bucket and of another unknown one, go on, and
// the hanging one still ends with its context.
func TestAHangingBucketLookupHoldsUpNoOtherResolve(t *testing.T) {
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true, Configure: func(o *server.Options) {
		o.Users = []*server.User{{Username: "app", Password: "pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.API.STREAM.INFO.OBJ_hanging"}},
		}}}
	}})
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("app", "pw"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Timeout(t, 30*time.Second)
	off, err := objectstore.NewOffloader(nc, js, objectstore.OffloadConfig{
		Bucket: objectstore.Config{Bucket: "payloads", Storage: "memory"}, Limit: 4096,
	})
	if err != nil {
		t.Fatal(err)
	}
	known := &nats.Msg{Subject: "x", Data: bytes.Repeat([]byte("p"), 10_000)}
	if _, err := off.Prepare(ctx, known, "q", "job for queue q"); err != nil {
		t.Fatal(err)
	}
	other, err := objectstore.Open(ctx, nc, objectstore.Config{Bucket: "other", Storage: "memory"})
	if err != nil {
		t.Fatal(err)
	}
	otherRef, err := other.Put(ctx, "o", strings.NewReader("another bucket's object"))
	if err != nil {
		t.Fatal(err)
	}

	hangingRef := objectstore.Ref{Bucket: "hanging", Name: "h", Size: 1, Digest: otherRef.Digest}
	hangCtx, stopHanging := context.WithCancel(ctx)
	hung := make(chan error, 1)
	go func() {
		_, _, err := off.Resolve(hangCtx, nats.Header{objectstore.RefHeader: {hangingRef.String()}}, nil)
		hung <- err
	}()
	// The server refusing the lookup says it was sent: that Resolve is
	// now waiting on it, for as long as hangCtx lasts.
	testutil.Eventually(t, 10*time.Second, "the lookup of bucket hanging sent and dropped", func() bool {
		err := nc.LastError()
		return err != nil && strings.Contains(err.Error(), "OBJ_hanging")
	})

	others := make(chan error, 1)
	go func() {
		body, _, err := off.Resolve(ctx, known.Header, known.Data)
		if err == nil && len(body) != 10_000 {
			err = fmt.Errorf("%d bytes, want 10000", len(body))
		}
		if err == nil {
			body, _, err = off.Resolve(ctx, nats.Header{objectstore.RefHeader: {otherRef.String()}}, nil)
			if err == nil && string(body) != "another bucket's object" {
				err = fmt.Errorf("read %q", body)
			}
		}
		others <- err
	}()
	select {
	case err := <-others:
		if err != nil {
			t.Errorf("Resolve of other buckets' objects while a lookup hangs: %v", err)
		}
	case err := <-hung:
		t.Fatalf("the hanging lookup ended before its context did: %v", err)
	case <-ctx.Done():
		t.Fatal("Resolve of other buckets' objects waited for the lookup of bucket hanging")
	}
	stopHanging()
	if err := <-hung; !errors.Is(err, context.Canceled) {
		t.Errorf("the hanging lookup, its context cancelled: %v; want context.Canceled", err)
	}
}
