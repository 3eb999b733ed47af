package loom_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"testing"
	"time"

	"github.com/loomrt/loom"
)

// Call returns the one response, or how the call ended, on every plane.
func TestCallReturnsTheOneResponse(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		srv, cli := c.runtime(), c.runtime()
		serve(t, srv, "ns/unary/answer", func(ctx context.Context, req string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				switch req {
				case "none":
				case "two":
					if yield("first", nil) {
						yield("second", nil)
					}
				case "fail":
					yield("", errors.New("no such thing"))
				case "late":
					if yield("partial", nil) {
						yield("", errors.New("broke after answering"))
					}
				default:
					yield("hello "+req, nil)
				}
			}
		})
		cl := client[string, string](t, cli, "ns/unary/answer")
		waitInstances(t, cl, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for i := range 50 {
			name := fmt.Sprint("caller ", i)
			if got, err := cl.Call(ctx, name); err != nil || got != "hello "+name {
				t.Fatalf("call %d: %q, %v", i, got, err)
			}
		}
		if got, err := cl.Call(ctx, "two"); err != nil || got != "first" {
			t.Fatalf("a handler answering twice: %q, %v; want the first answer", got, err)
		}
		if got, err := cl.Call(ctx, "none"); !errors.Is(err, loom.ErrNoResponse) || got != "" {
			t.Fatalf("a handler not answering: %q, %v; want ErrNoResponse", got, err)
		}
		var he *loom.HandlerError
		if _, err := cl.Call(ctx, "fail"); err == nil || (!errors.As(err, &he) && err.Error() != "no such thing") {
			t.Fatalf("a failing handler: %v", err)
		}
		if got, err := cl.Call(ctx, "late"); err == nil || got != "" {
			t.Fatalf("a handler failing after its answer: %q, %v; want the error", got, err)
		}
		// Still serving after all that.
		if got, err := cl.Call(ctx, "again"); err != nil || got != "hello again" {
			t.Fatalf("after the odd calls: %q, %v", got, err)
		}
	})
}

// A []byte response from Call is the caller's, even from a client that
// borrows its stream's items from the receive buffer.
func TestCallResponsesOutliveTheCall(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		srv, cli := c.runtime(), c.runtime()
		serve(t, srv, "ns/unary/bytes", func(ctx context.Context, req []byte) iter.Seq2[[]byte, error] {
			return func(yield func([]byte, error) bool) { yield(bytes.Repeat(req, 3), nil) }
		})
		cl := client[[]byte, []byte](t, cli, "ns/unary/bytes", loom.WithBorrowedResponses())
		waitInstances(t, cl, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var kept [][]byte
		for i := range 20 {
			got, err := cl.Call(ctx, []byte{byte('a' + i)})
			if err != nil {
				t.Fatal(err)
			}
			kept = append(kept, got)
		}
		for i, got := range kept {
			if want := bytes.Repeat([]byte{byte('a' + i)}, 3); !bytes.Equal(got, want) {
				t.Fatalf("response %d is %q after later calls, want %q", i, got, want)
			}
		}
	})
}
