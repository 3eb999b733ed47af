package loom_test

import (
	"context"
	"errors"
	"iter"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/loomrt/loom"
)

// aboveFrame is a payload above the frame size the test sets (and the
// embedded NATS server's max payload), belowFrame one below both.
const (
	frameSize  = 1 << 20
	aboveFrame = 2 << 20
	belowFrame = 512 << 10
)

func TestTheFrameSizeLimitsHoldOnEveryPlane(t *testing.T) {
	eachPlane(t, func(t *testing.T, c *cluster) {
		c.cfg.RequestPlane.MaxFrameSize = frameSize
		srv := c.runtime()
		var entered atomic.Int32
		serve(t, srv, "limits/svc/in", func(ctx context.Context, b []byte) iter.Seq2[int, error] {
			entered.Add(1)
			return func(yield func(int, error) bool) { yield(len(b), nil) }
		})
		serve(t, srv, "limits/svc/out", func(ctx context.Context, n int) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) { yield(strings.Repeat("x", n), nil) }
		})
		type wrapped struct{ B []byte }
		serve(t, srv, "limits/svc/wrapped", func(ctx context.Context, w wrapped) iter.Seq2[[]byte, error] {
			return func(yield func([]byte, error) bool) { yield(w.B, nil) }
		})
		caller := c.runtime()
		in := client[[]byte, int](t, caller, "limits/svc/in")
		out := client[int, string](t, caller, "limits/svc/out")
		// Other types than the handler's: the call goes through the codec.
		raw := client[map[string][]byte, []byte](t, caller, "limits/svc/wrapped")

		tooLarge := func(what string, err error) {
			t.Helper()
			if !errors.Is(err, loom.ErrTooLarge) || errors.Is(err, loom.ErrUnreachable) || errors.Is(err, loom.ErrHandlerPanic) {
				t.Fatalf("%s: err = %v, want ErrTooLarge", what, err)
			}
			if !strings.Contains(err.Error(), "limits/svc/") {
				t.Errorf("%s: %q does not name the endpoint", what, err)
			}
			saidOnce(t, err)
		}
		_, err := collect(in.Generate(context.Background(), make([]byte, aboveFrame)))
		tooLarge("a request above the frame size", err)
		if entered.Load() != 0 {
			t.Fatalf("the handler ran for a request above the frame size")
		}
		_, err = collect(out.Generate(context.Background(), aboveFrame))
		tooLarge("a response item above the frame size", err)
		_, err = collect(raw.Generate(context.Background(), map[string][]byte{"B": make([]byte, aboveFrame)}))
		tooLarge("a request of other types above the frame size", err)

		if got, err := collect(in.Generate(context.Background(), make([]byte, belowFrame))); err != nil || got[0] != belowFrame {
			t.Fatalf("a request that belowFrame: %v, %v", got, err)
		}
		if got, err := collect(out.Generate(context.Background(), belowFrame)); err != nil || len(got[0]) != belowFrame {
			t.Fatalf("a response that belowFrame: %d items, %v", len(got), err)
		}
		if got, err := collect(raw.Generate(context.Background(), map[string][]byte{"B": make([]byte, belowFrame)})); err != nil || len(got[0]) != belowFrame {
			t.Fatalf("a request of other types that belowFrame: %d items, %v", len(got), err)
		}
	})
}
