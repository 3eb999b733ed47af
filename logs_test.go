package loom_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"reflect"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom"
)

// TestLogHandlerPutsTheIdsAtTheTopOfAGroupedRecord: trace_id and span_id
// are top-level fields of every record logged with a traced context, as
// log pipelines look for them, also from a logger with groups open; the
// record's own attributes stay in their groups.
func TestLogHandlerPutsTheIdsAtTheTopOfAGroupedRecord(t *testing.T) {
	sc, err := loom.ParseTraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if err != nil {
		t.Fatal(err)
	}
	traced := trace.ContextWithSpanContext(context.Background(), sc)
	ids := map[string]any{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
	for _, tc := range []struct {
		name string
		log  func(l *slog.Logger, ctx context.Context)
		want map[string]any
	}{
		{"no group", func(l *slog.Logger, ctx context.Context) { l.With("a", 1).InfoContext(ctx, "m", "b", 2) },
			map[string]any{"a": 1.0, "b": 2.0}},
		{"groups with attributes in each", func(l *slog.Logger, ctx context.Context) {
			l.With("a", 1).WithGroup("http").With("b", 2).WithGroup("req").InfoContext(ctx, "m", "c", 3)
		}, map[string]any{"a": 1.0, "http": map[string]any{"b": 2.0, "req": map[string]any{"c": 3.0}}}},
		{"an empty group", func(l *slog.Logger, ctx context.Context) { l.WithGroup("empty").InfoContext(ctx, "m") },
			map[string]any{}},
		{"a group with only the record's attributes", func(l *slog.Logger, ctx context.Context) {
			l.WithGroup("g").InfoContext(ctx, "m", slog.Group("inner", "d", 4))
		}, map[string]any{"g": map[string]any{"inner": map[string]any{"d": 4.0}}}},
	} {
		for _, withSpan := range []bool{true, false} {
			name := tc.name + ", untraced"
			ctx := context.Background()
			if withSpan {
				name, ctx = tc.name+", traced", traced
			}
			t.Run(name, func(t *testing.T) {
				var buf bytes.Buffer
				tc.log(slog.New(loom.LogHandler(slog.NewJSONHandler(&buf, nil))), ctx)
				var got map[string]any
				if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
					t.Fatalf("%v: %s", err, buf.String())
				}
				delete(got, "time")
				delete(got, "level")
				delete(got, "msg")
				want := map[string]any{}
				for k, v := range tc.want {
					want[k] = v
				}
				if withSpan {
					for k, v := range ids {
						want[k] = v
					}
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("logged %s\nwant fields %v", buf.String(), want)
				}
			})
		}
	}
}
