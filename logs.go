package loom

import (
	"context"
	"log/slog"
	"slices"

	"go.opentelemetry.io/otel/trace"
)

// LogHandler wraps h so that a record logged with a context (InfoContext
// and the like) carries the request's trace_id, span_id and request_id,
// when the context has them: the span in it, and the Call of the request
// (CallFromContext). They are top-level fields of the record, where log
// pipelines look for them, also from a logger with groups open. The
// runtime's own logger (NewLogger) is made with it; a program that brings
// its own logger wraps its handler to get the same.
func LogHandler(h slog.Handler) slog.Handler {
	if _, ok := h.(logHandler); ok {
		return h
	}
	return logHandler{full: h, top: h}
}

// logHandler keeps h with every attribute and group applied (full), for
// records without ids, and h with only what came before the first group
// (top) and the groups opened since with their attributes, to rebuild a
// record with ids at the top.
type logHandler struct {
	full, top slog.Handler
	groups    []logGroup
}

type logGroup struct {
	name  string
	attrs []slog.Attr
}

func (h logHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.full.Enabled(ctx, l)
}

func (h logHandler) Handle(ctx context.Context, r slog.Record) error {
	var ids [3]slog.Attr
	n := 0
	if ctx != nil {
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			ids[0], ids[1] = slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String())
			n = 2
		}
		if c := callFrom(ctx); c != nil && c.RequestID != "" {
			ids[n] = slog.String("request_id", c.RequestID)
			n++
		}
	}
	if n == 0 {
		return h.full.Handle(ctx, r)
	}
	if len(h.groups) == 0 {
		r.AddAttrs(ids[:n]...)
		return h.top.Handle(ctx, r)
	}
	// The record's attributes go in the open groups, innermost last, and
	// the ids beside the outermost.
	attrs := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool { attrs = append(attrs, a); return true })
	for _, g := range slices.Backward(h.groups) {
		attrs = []slog.Attr{{Key: g.name, Value: slog.GroupValue(append(slices.Clip(g.attrs), attrs...)...)}}
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	out.AddAttrs(attrs...)
	out.AddAttrs(ids[:n]...)
	return h.top.Handle(ctx, out)
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	n := logHandler{full: h.full.WithAttrs(as), top: h.top, groups: h.groups}
	if len(h.groups) == 0 {
		n.top = n.full
		return n
	}
	n.groups = slices.Clone(h.groups)
	last := &n.groups[len(n.groups)-1]
	last.attrs = append(slices.Clip(last.attrs), as...)
	return n
}

func (h logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return logHandler{full: h.full.WithGroup(name), top: h.top, groups: append(slices.Clip(h.groups), logGroup{name: name})}
}
