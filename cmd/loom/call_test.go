package main

import (
	"bytes"
	"context"
	"errors"
	"iter"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom"
	"github.com/loomrt/loom/cmd/loom/internal/demo"
)

func TestLoomCallPrintsEachResponseAsJSON(t *testing.T) {
	for _, fast := range []string{"true", "false"} {
		t.Run("local fast path "+fast, func(t *testing.T) {
			t.Setenv("LOOM_CLIENT_LOCAL_FAST_PATH", fast)
			t.Setenv("LOOM_LOG_LEVEL", "error")
			ctx := context.Background()
			rt, err := loom.NewRuntime(ctx, loom.WithLogger(quietLog()))
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Shutdown(ctx)
			ep, err := rt.Endpoint("calltest/backend/generate")
			if err != nil {
				t.Fatal(err)
			}
			gen := loom.EngineFunc[demo.Request, demo.Token](func(ctx context.Context, r demo.Request) iter.Seq2[demo.Token, error] {
				return func(yield func(demo.Token, error) bool) {
					for i := range r.MaxTokens {
						if !yield(demo.Token{Text: r.Prompt, Index: i, Instance: 7}, nil) {
							return
						}
					}
				}
			})
			if err := loom.Serve(ctx, ep, gen); err != nil {
				t.Fatal(err)
			}
			req, err := parseJSONArg(`{"prompt": "hi", "max_tokens": 3}`)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := call(ctx, &out, "calltest/backend/generate", req, 0, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			want := `{"index":0,"instance":7,"text":"hi"}
{"index":1,"instance":7,"text":"hi"}
{"index":2,"instance":7,"text":"hi"}
`
			if out.String() != want {
				t.Fatalf("printed:\n%s\nwant:\n%s", &out, want)
			}
		})
	}
}

func TestLoomCallErrorsSayWhatIsWrong(t *testing.T) {
	t.Setenv("LOOM_CLIENT_WAIT_TIMEOUT", "50ms")
	t.Setenv("LOOM_LOG_LEVEL", "error")
	if _, err := parseJSONArg(`{"prompt": `); err == nil || !strings.Contains(err.Error(), "not JSON") {
		t.Errorf("bad JSON: %v", err)
	}
	if _, err := parseJSONArg(`{} {}`); err == nil || !strings.Contains(err.Error(), "more than one JSON value") {
		t.Errorf("two values: %v", err)
	}
	err := call(context.Background(), &bytes.Buffer{}, "nobody/is/home", map[string]any{}, 0, 0)
	if !errors.Is(err, loom.ErrNoInstances) {
		t.Errorf("calling an endpoint nobody serves: %v, want ErrNoInstances", err)
	}
	err = call(context.Background(), &bytes.Buffer{}, "Bad/Path", map[string]any{}, 0, 0)
	if err == nil || !strings.Contains(err.Error(), "namespace/component/endpoint") {
		t.Errorf("bad path: %v", err)
	}
}

func TestReadRequestArgFromStdinAndFile(t *testing.T) {
	big := `{"prompt": "` + strings.Repeat("x", 200<<10) + `"}`
	got, err := readRequestArg("-", strings.NewReader(big))
	if err != nil || got != big {
		t.Fatalf("from stdin: %d bytes, %v; want the %d bytes given", len(got), err, len(big))
	}
	path := filepath.Join(t.TempDir(), "req.json")
	if err := os.WriteFile(path, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err = readRequestArg("@"+path, nil); err != nil || got != big {
		t.Fatalf("from @file: %d bytes, %v", len(got), err)
	}
	if _, err = readRequestArg("@"+path+".missing", nil); err == nil || !strings.Contains(err.Error(), "request file") {
		t.Errorf("a missing file gave %v", err)
	}
	if got, _ = readRequestArg(`{"a":1}`, nil); got != `{"a":1}` {
		t.Errorf("a literal request came back as %q", got)
	}
}
