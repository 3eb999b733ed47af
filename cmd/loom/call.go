package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom"
)

func newCall() *cobra.Command {
	var (
		timeout  time.Duration
		instance string
	)
	cmd := &cobra.Command{
		Use:   "call namespace/component/endpoint '<json request>'",
		Short: "Call an endpoint of a running system and print each response as a line of JSON",
		Long: `Call an endpoint of a running system. The request is JSON; it is sent in the
codec the serving instance advertises (MessagePack or JSON). Each response
item is printed on its own line as JSON, as it arrives. The instance is
found through the discovery the configuration names (see loom config).

Ctrl-C asks the handler to stop gracefully; a second Ctrl-C kills the call.`,
		Example: `  loom call demo/backend/generate '{"prompt": "hello", "max_tokens": 5}'`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := parseJSONArg(args[1])
			if err != nil {
				return err
			}
			var direct uint64
			if instance != "" {
				if direct, err = strconv.ParseUint(instance, 16, 64); err != nil {
					return fmt.Errorf("--instance %q: want the instance id in hex, as loom ls prints it", instance)
				}
			}
			return call(cmd.Context(), cmd.OutOrStdout(), args[0], req, direct, timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (0: no limit)")
	cmd.Flags().StringVar(&instance, "instance", "", "call this instance (hex id) instead of routing")
	return cmd
}

func call(parent context.Context, out io.Writer, path string, req any, direct uint64, timeout time.Duration) error {
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	ctx, stop := loom.WithStop(ctx)
	defer stop()
	// First signal: stop gracefully; second: kill.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case <-sigs:
			stop()
		case <-ctx.Done():
			return
		}
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()

	rt, err := loom.NewRuntime(ctx)
	if err != nil {
		return err
	}
	defer rt.Shutdown(context.Background())
	ep, err := rt.Endpoint(path)
	if err != nil {
		return err
	}
	client, err := loom.NewClient[any, any](ctx, ep)
	if err != nil {
		return err
	}
	defer client.Close()
	var eng loom.Engine[any, any] = client
	if direct != 0 {
		eng = client.Direct(direct)
	}
	enc := json.NewEncoder(out)
	for item, err := range eng.Generate(ctx, req) {
		if err != nil {
			return err
		}
		if err := enc.Encode(jsonable(item)); err != nil {
			return fmt.Errorf("print response: %w", err)
		}
	}
	return nil
}

// parseJSONArg decodes a request given on the command line, keeping whole
// numbers whole so a handler's integer fields decode them.
func parseJSONArg(s string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("the request %q is not JSON: %v", s, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("the request %q has more than one JSON value", s)
	}
	return numbers(v), nil
}

func numbers(v any) any {
	switch v := v.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	case map[string]any:
		for k, e := range v {
			v[k] = numbers(e)
		}
	case []any:
		for i, e := range v {
			v[i] = numbers(e)
		}
	}
	return v
}

// jsonable turns what MessagePack decodes into something encoding/json
// prints: maps with non-string keys get string keys, bytes stay base64.
func jsonable(v any) any {
	switch v := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case map[string]any:
		for k, e := range v {
			v[k] = jsonable(e)
		}
	case []any:
		for i, e := range v {
			v[i] = jsonable(e)
		}
	case float64:
		if math.IsInf(v, 0) || math.IsNaN(v) {
			return fmt.Sprint(v)
		}
	}
	return v
}
