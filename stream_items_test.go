package loom_test

import (
	"bytes"
	"context"
	"iter"
	"testing"
	"time"

	"github.com/loomrt/loom"
)

// byteItems are []byte responses of every length class the encodings
// distinguish, nil and empty included, each with its own content.
func byteItems() [][]byte {
	items := [][]byte{nil, {}}
	for i, n := range []int{1, 255, 256, 65535, 65536, 100_000} {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i*7 + j)
		}
		items = append(items, b)
	}
	return items
}

// A []byte item arrives as the handler yielded it, on every plane and in
// both codecs: over TCP with MessagePack the server sends the encoding's
// header and the item's bytes without joining them first, which must
// give the bytes the encoder gives.
func TestByteItemsArriveAsYielded(t *testing.T) {
	for _, cdc := range []string{"msgpack", "json"} {
		t.Run(cdc, func(t *testing.T) {
			eachPlane(t, func(t *testing.T, c *cluster) {
				srv, cli := c.runtime(), c.runtime()
				ep := endpoint(t, srv, "ns/bytes/items")
				eng := loom.EngineFunc[[]byte, []byte](func(ctx context.Context, req []byte) iter.Seq2[[]byte, error] {
					return func(yield func([]byte, error) bool) {
						for _, it := range byteItems() {
							if !yield(it, nil) {
								return
							}
						}
					}
				})
				if err := loom.Serve(context.Background(), ep, eng, loom.WithCodec(cdc)); err != nil {
					t.Fatal(err)
				}
				for _, opts := range [][]loom.ClientOption{nil, {loom.WithBorrowedResponses()}} {
					cl := client[[]byte, []byte](t, cli, "ns/bytes/items", opts...)
					waitInstances(t, cl, 1)
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					want := byteItems()
					i := 0
					for got, err := range cl.Generate(ctx, []byte("go")) {
						if err != nil {
							t.Fatal(err)
						}
						if i >= len(want) {
							t.Fatalf("more than %d items", len(want))
						}
						if !bytes.Equal(got, want[i]) || (want[i] == nil) != (got == nil) {
							t.Fatalf("item %d (borrowed %v): %d bytes (nil %v), want %d (nil %v)", i, opts != nil, len(got), got == nil, len(want[i]), want[i] == nil)
						}
						i++
					}
					cancel()
					if i != len(want) {
						t.Fatalf("%d items, want %d", i, len(want))
					}
				}
			})
		})
	}
}

// A handler served WithReusedItems refills one buffer for every item; each
// caller, in this process or another, still gets every item as it was
// yielded, and may keep it.
func TestReusedItemsReachEveryCallerIntact(t *testing.T) {
	const n = 300
	eachPlane(t, func(t *testing.T, c *cluster) {
		srv, cli := c.runtime(), c.runtime()
		ep := endpoint(t, srv, "ns/bytes/reused")
		eng := loom.EngineFunc[[]byte, []byte](func(ctx context.Context, req []byte) iter.Seq2[[]byte, error] {
			return func(yield func([]byte, error) bool) {
				buf := make([]byte, 16)
				for i := range n {
					for j := range buf {
						buf[j] = byte(i + j)
					}
					if !yield(buf, nil) {
						return
					}
				}
			}
		})
		if err := loom.Serve(context.Background(), ep, eng, loom.WithReusedItems()); err != nil {
			t.Fatal(err)
		}
		// The callers keep every item; in this process (the local plane)
		// too, where the handler's value would otherwise arrive as is.
		for _, caller := range []*loom.Runtime{cli, srv} {
			cl := client[[]byte, []byte](t, caller, "ns/bytes/reused")
			waitInstances(t, cl, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			got, err := collect(cl.Generate(ctx, []byte("go")))
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != n {
				t.Fatalf("%d items, want %d", len(got), n)
			}
			for i, it := range got {
				for j, b := range it {
					if b != byte(i+j) {
						t.Fatalf("item %d byte %d is %d, want %d: the item changed after its yield", i, j, b, byte(i+j))
					}
				}
			}
		}
	})
}
