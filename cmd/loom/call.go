package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
)

func newCall() *cobra.Command {
	var (
		timeout  time.Duration
		instance string
	)
	cmd := &cobra.Command{
		Use:   "call namespace/component/endpoint '<json request>' | - | @file",
		Short: "Call an endpoint of a running system and print each response as a line of JSON",
		Long: `Call an endpoint of a running system. The request is JSON; it is sent in the
codec the serving instance advertises (MessagePack or JSON). Each response
item is printed on its own line as JSON, as it arrives. The instance is
found through the discovery the configuration names (see loom config).
The request may also come from standard input (-) or a file (@path), for
requests too long for a command line.

Ctrl-C asks the handler to stop gracefully; a second Ctrl-C kills the call.`,
		Example: `  loom call demo/backend/generate '{"prompt": "hello", "max_tokens": 5}'
  loom call demo/backend/generate @request.json
  generate-request | loom call demo/backend/generate -`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			text, err := readRequestArg(args[1], cmd.InOrStdin())
			if err != nil {
				return err
			}
			req, err := parseJSONArg(text)
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
		if err := enc.Encode(codec.JSONValue(item)); err != nil {
			return fmt.Errorf("print response: %w", err)
		}
	}
	return nil
}

// parseJSONArg decodes a request given on the command line, keeping whole
// numbers whole so a handler's integer fields decode them.
func parseJSONArg(s string) (any, error) {
	v, err := codec.ParseJSON([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("the request %q: %w", s, err)
	}
	return v, nil
}

// maxRequestArg bounds a request read from a file or standard input; the
// request plane's frame limit is far below it.
const maxRequestArg = 64 << 20

// readRequestArg returns the request text an argument gives: itself, or
// standard input for "-", or a file's contents for "@path".
func readRequestArg(arg string, stdin io.Reader) (string, error) {
	var r io.Reader
	switch {
	case arg == "-":
		r = stdin
		arg = "standard input"
	case strings.HasPrefix(arg, "@"):
		f, err := os.Open(arg[1:])
		if err != nil {
			return "", fmt.Errorf("the request file: %w", err)
		}
		defer f.Close()
		r = f
		arg = arg[1:]
	default:
		return arg, nil
	}
	b, err := io.ReadAll(io.LimitReader(r, maxRequestArg+1))
	if err != nil {
		return "", fmt.Errorf("reading the request from %s: %w", arg, err)
	}
	if len(b) > maxRequestArg {
		return "", fmt.Errorf("the request in %s is larger than %d MiB", arg, maxRequestArg>>20)
	}
	return string(b), nil
}
