// Command split is the smallest Loom program: it serves an endpoint that
// splits a sentence into words, calls it through a Client, and exits.
//
//	go run ./examples/split
package main

import (
	"context"
	"fmt"
	"iter"
	"strings"

	"github.com/loomrt/loom"
	_ "github.com/loomrt/loom/discovery/all" // every discovery backend, chosen by discovery.backend
)

func main() {
	loom.Run(func(ctx context.Context, rt *loom.Runtime) error {
		ep, err := rt.Endpoint("hello/words/split")
		if err != nil {
			return err
		}
		split := loom.EngineFunc[string, string](func(ctx context.Context, s string) iter.Seq2[string, error] {
			return func(yield func(string, error) bool) {
				for _, w := range strings.Fields(s) {
					if !yield(w, nil) {
						return
					}
				}
			}
		})
		if err := loom.Serve(ctx, ep, split); err != nil {
			return err
		}
		client, err := loom.NewClient[string, string](ctx, ep)
		if err != nil {
			return err
		}
		for word, err := range client.Generate(ctx, "hello from loom") {
			if err != nil {
				return err
			}
			fmt.Println(word)
		}
		return nil
	})
}
