// Package jsstream holds the one rule for every JetStream stream Loom
// touches (work queues, their dead letters, durable events, EventBus
// topics, the object store's bucket): create it when it is absent; when it
// is present, use it as it is, never changing a limit an operator (or
// another program) set, and warn naming each setting that differs from
// what this process would have created.
package jsstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Difference is one setting of an existing stream that differs from what
// this process would have created.
type Difference struct {
	// Setting is the setting's name as the nats CLI shows it
	// ("max_msgs", "retention").
	Setting string
	// Stream is the stream's value, Configured the process's.
	Stream, Configured string
}

// String returns "setting stream (configured X)".
func (d Difference) String() string {
	return fmt.Sprintf("%s %s (configured %s)", d.Setting, d.Stream, d.Configured)
}

// Ensure returns the stream want.Name. When it does not exist it is
// created with want. When it does, its settings are kept; each setting
// that differs from want is returned and logged in one warning on log
// (nil: slog.Default()), and the metadata of want is written over the
// stream's (labels of the process's own settings, such as a queue's codec;
// no limit changes).
func Ensure(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, log *slog.Logger) (jetstream.Stream, []Difference, error) {
	if log == nil {
		log = slog.Default()
	}
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = js.Stream(ctx, want.Name) // another process created it meanwhile
		} else if err == nil {
			return s, nil, nil
		}
	}
	if err != nil {
		return nil, nil, err
	}
	have := s.CachedInfo().Config
	diffs := Compare(have, want)
	if len(diffs) > 0 {
		parts := make([]string, len(diffs))
		for i, d := range diffs {
			parts[i] = d.String()
		}
		log.Warn(fmt.Sprintf("stream %s exists with settings that differ from this process's; keeping the stream's (change them with `nats stream edit %s`)", want.Name, want.Name),
			"stream", want.Name, "differences", strings.Join(parts, ", "))
	}
	relabel := false
	for k, v := range want.Metadata {
		if have.Metadata[k] != v {
			relabel = true
		}
	}
	if relabel {
		cfg := have
		cfg.Metadata = maps.Clone(have.Metadata)
		if cfg.Metadata == nil {
			cfg.Metadata = map[string]string{}
		}
		maps.Copy(cfg.Metadata, want.Metadata)
		if s2, err := js.UpdateStream(ctx, cfg); err == nil {
			s = s2
		} else {
			// Labels only: the stream works without them.
			log.Warn("cannot label stream "+want.Name+" with Loom's metadata", "stream", want.Name, "err", err)
		}
	}
	return s, diffs, nil
}

// Compare returns the settings of have that differ from want: the limits
// and the settings that change what the stream keeps. Descriptions and
// metadata are labels and not compared.
func Compare(have, want jetstream.StreamConfig) []Difference {
	var d []Difference
	add := func(name string, h, w any) {
		hs, ws := fmt.Sprint(h), fmt.Sprint(w)
		if hs != ws {
			d = append(d, Difference{Setting: name, Stream: hs, Configured: ws})
		}
	}
	add("subjects", strings.Join(sorted(have.Subjects), ","), strings.Join(sorted(want.Subjects), ","))
	add("retention", have.Retention, want.Retention)
	add("discard", have.Discard, want.Discard)
	add("max_msgs", limit(have.MaxMsgs), limit(want.MaxMsgs))
	add("max_bytes", limit(have.MaxBytes), limit(want.MaxBytes))
	add("max_age", have.MaxAge, want.MaxAge)
	add("max_msgs_per_subject", limit(have.MaxMsgsPerSubject), limit(want.MaxMsgsPerSubject))
	add("max_msg_size", limit(int64(have.MaxMsgSize)), limit(int64(want.MaxMsgSize)))
	add("storage", have.Storage, want.Storage)
	add("replicas", max(have.Replicas, 1), max(want.Replicas, 1))
	if want.Duplicates != 0 {
		add("duplicate_window", have.Duplicates, want.Duplicates)
	}
	return d
}

// limit shows 0 and negative limits as the server treats them: none.
func limit(v int64) string {
	if v <= 0 {
		return "unlimited"
	}
	return fmt.Sprint(v)
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }

// Covers reports whether one of the stream subjects (which may hold the
// wildcards * and >) matches subject.
func Covers(subjects []string, subject string) bool {
	for _, pattern := range subjects {
		if match(pattern, subject) {
			return true
		}
	}
	return false
}

func match(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}
