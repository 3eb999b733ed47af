package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/config"
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

Ctrl-C asks the handler to stop gracefully; a second Ctrl-C kills the call
and exits 130 (128 + SIGINT), as a loom.Run program does. Ctrl-C before an
instance is found (while connecting or waiting for one) ends the call at
once, with 130.`,
		Example: `  loom call hello/greeter/greet '{"name": "you"}'      # go run ./examples/hello server, with loom up's lines
  loom call hello/greeter/greet @request.json
  make-request | loom call hello/greeter/greet -`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout < 0 {
				return &usageError{cmd, fmt.Errorf("--timeout %s: want 0 or more", timeout)}
			}
			// Before connecting: a typo must not wait for discovery first.
			if _, _, _, err := loom.ParsePath(args[0]); err != nil {
				return &usageError{cmd, err}
			}
			text, err := readRequestArg(args[1], cmd.InOrStdin())
			if err != nil {
				return err
			}
			req, err := parseJSONArg("the request", text)
			if err != nil {
				return err
			}
			var direct instanceID
			if instance != "" {
				if direct, err = parseInstanceID(instance); err != nil {
					return &usageError{cmd, err}
				}
			}
			return call(cmd.Context(), cmd.OutOrStdout(), args[0], req, direct, timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (0: no limit)")
	cmd.Flags().StringVar(&instance, "instance", "", "call this instance instead of routing: its id in hex as loom ls prints it, or in decimal as loom ls --json prints it")
	return cmd
}

func call(parent context.Context, out io.Writer, path string, req any, direct instanceID, timeout time.Duration) error {
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
	// First signal: stop gracefully; second: kill, and exit with 128 +
	// the signal's number, as loom.Run does. A first signal before the
	// client knows an instance (it is connecting, or waiting for one to
	// appear) ends the call at once: no request went out, so there is
	// nothing to stop gracefully, and waiting on would make Ctrl-C wait
	// for client.wait_timeout and then report no instances.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	var killedBy atomic.Int32
	var known atomic.Pointer[loom.Client[any, any]]
	go func() {
		select {
		case sig := <-sigs:
			if c := known.Load(); c == nil || len(c.Instances()) == 0 {
				if n, ok := sig.(syscall.Signal); ok {
					killedBy.Store(int32(n))
				}
				cancel()
				return
			}
			stop()
		case <-ctx.Done():
			return
		}
		select {
		case sig := <-sigs:
			if n, ok := sig.(syscall.Signal); ok {
				killedBy.Store(int32(n))
			}
			cancel()
		case <-ctx.Done():
		}
	}()

	// killed is the exit code of a call a signal ended, if one did: what
	// the caller asked for, no error to print.
	killed := func(err error) error {
		if n := killedBy.Load(); n != 0 {
			return exitCode(128 + n)
		}
		return err
	}
	rt, err := toolRuntime(ctx)
	if err != nil {
		return killed(err)
	}
	defer rt.Shutdown(context.Background())
	ep, err := rt.Endpoint(path)
	if err != nil {
		return err
	}
	client, err := loom.NewClient[any, any](ctx, ep)
	if err != nil {
		return killed(err)
	}
	defer client.Close()
	known.Store(client)
	var eng loom.Engine[any, any] = client
	if direct.given() {
		id, err := direct.resolve(ctx, rt, client)
		if err != nil {
			return killed(err)
		}
		eng = client.Direct(id)
	}
	enc := json.NewEncoder(out)
	for item, err := range eng.Generate(ctx, req) {
		if err != nil {
			if killedBy.Load() != 0 {
				return killed(err)
			}
			return withDiscoveryHint(rt, err)
		}
		if err := enc.Encode(codec.JSONValue(item)); err != nil {
			return fmt.Errorf("print response: %w", err)
		}
	}
	return nil
}

// instanceID is the id --instance gives. loom ls prints ids in hex (as
// discovery keys and logs do) and loom ls --json in decimal (the record's
// JSON number), so both are taken: a 0x prefix or a hex letter makes it
// hex; digits alone may be either, and the one naming a live instance of
// the endpoint wins.
type instanceID struct {
	hex, dec     uint64
	hexOK, decOK bool
	text         string
}

func (i instanceID) given() bool { return i.hexOK || i.decOK }

// parseInstanceID reads an --instance value.
func parseInstanceID(s string) (instanceID, error) {
	id := instanceID{text: s}
	if h, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		v, err := strconv.ParseUint(h, 16, 64)
		id.hex, id.hexOK = v, err == nil && v != 0
	} else {
		v, err := strconv.ParseUint(s, 16, 64)
		id.hex, id.hexOK = v, err == nil && v != 0
		v, err = strconv.ParseUint(s, 10, 64)
		id.dec, id.decOK = v, err == nil && v != 0
	}
	if !id.given() {
		return id, fmt.Errorf("--instance %q: want a non-zero instance id, in hex as loom ls prints it (or with 0x) or in decimal as loom ls --json prints it", s)
	}
	return id, nil
}

// resolve returns the id to call. An id that reads both ways is looked up
// among the endpoint's instances, waiting for the first to be known.
func (i instanceID) resolve(ctx context.Context, rt *loom.Runtime, client *loom.Client[any, any]) (uint64, error) {
	if !i.decOK || !i.hexOK {
		if i.hexOK {
			return i.hex, nil
		}
		return i.dec, nil
	}
	wctx, cancel := context.WithTimeout(ctx, rt.Config().Client.WaitTimeout)
	err := client.WaitForInstances(wctx, 1)
	cancel()
	if err != nil && ctx.Err() != nil {
		return 0, err
	}
	var asHex, asDec bool
	for _, inst := range client.Instances() {
		asHex = asHex || inst.ID == i.hex
		asDec = asDec || inst.ID == i.dec
	}
	switch {
	case asHex && asDec:
		return 0, fmt.Errorf("--instance %s names two instances, %x in hex and %d in decimal; write 0x%s for the first", i.text, i.hex, i.dec, i.text)
	case asDec:
		return i.dec, nil
	}
	// Live in hex, or in neither: the call reports what it finds.
	return i.hex, nil
}

// withDiscoveryHint adds, to a call that found no instance, that memory
// discovery sees only this process, which a newcomer running loom call
// without loom up's environment would not guess.
func withDiscoveryHint(rt *loom.Runtime, err error) error {
	if errors.Is(err, loom.ErrNoInstances) && memoryDiscovery(rt) {
		return fmt.Errorf("%w (discovery.backend is memory, which sees only this process: start loom up and set the lines it prints in this shell)", err)
	}
	return err
}

// toolRuntime starts the runtime of a command that serves no endpoint
// (ls, call, pub, sub, dashboard): the process's configuration with the
// status server off. LOOM_STATUS_PORT=-1, one of the lines loom up
// prints, is there for the components started in the same shell; a
// command that only looks or calls has nothing for it to report.
func toolRuntime(ctx context.Context) (*loom.Runtime, error) {
	return loom.NewRuntime(ctx, loom.WithLoadOptions(config.WithValue("status.port", "0")))
}

// memoryDiscovery reports whether rt finds instances in memory, that is
// only its own.
func memoryDiscovery(rt *loom.Runtime) bool {
	b := rt.Config().Discovery.Backend
	return b == "" || b == "memory"
}

// parseJSONArg decodes a request or event given on the command line, what
// naming it in the error, keeping whole numbers whole so a handler's
// integer fields decode them.
func parseJSONArg(what, s string) (any, error) {
	v, err := codec.ParseJSON([]byte(s))
	if err != nil {
		// The text may be a file of megabytes: quote its start only.
		return nil, fmt.Errorf("%s %.80q: %w", what, s, err)
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
