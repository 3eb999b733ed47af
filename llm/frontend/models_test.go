package frontend_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/loomrt/loom/llm/frontend"
	"github.com/loomrt/loom/llm/kvrouter"
)

// TestEachModelGoesOnlyToItsOwnWorkers: the frontend passes the router
// only workers of the request's model and says so (RouteInfo.Filtered),
// so the router does not check each worker's model again. The
// frontend's own filter is then all that keeps a request off the workers
// of another model, under either kind of router.
func TestEachModelGoesOnlyToItsOwnWorkers(t *testing.T) {
	// The kv router reads kv_events over NATS: its stack calls over the
	// nats plane, on the embedded server that brings.
	for _, router := range []struct{ name, plane string }{{"round_robin", "tcp"}, {kvrouter.KV, "nats"}} {
		t.Run(router.name, func(t *testing.T) {
			s := newSystem(t, router.plane, nil)
			fcfg := frontend.Config{}
			if router.name == kvrouter.KV {
				r, err := kvrouter.New(context.Background(), s.rt, kvrouter.KV, kvrouter.Config{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = r.Close() })
				fcfg.Router = r
			}
			s.start(fcfg)
			models := []string{model, "other"}
			workers := map[string][]*testWorker{}
			for _, m := range models {
				for range 2 {
					workers[m] = append(workers[m], s.worker(workerOpts{model: m}))
				}
			}
			s.waitReady(4)

			c := oaiClient(s)
			for i := range 12 {
				for _, m := range models {
					p := chatParams(fmt.Sprintf("question %d for %s", i, m), 2)
					p.Model = openai.ChatModel(m)
					resp, err := c.Chat.Completions.New(context.Background(), p)
					if err != nil || resp.Model != m {
						t.Fatalf("a chat for model %s: %v (answered as model %q)", m, err, resp.Model)
					}
				}
			}
			for _, m := range models {
				served := int64(0)
				for _, w := range workers[m] {
					w.mu.Lock()
					for _, req := range w.requests {
						if req.Model != m {
							t.Errorf("a worker of model %s was sent a request for %s", m, req.Model)
						}
					}
					w.mu.Unlock()
					served += w.served.Load()
				}
				if served != 12 {
					t.Errorf("the workers of model %s served %d requests, want the 12 sent for it", m, served)
				}
			}
		})
	}
}
