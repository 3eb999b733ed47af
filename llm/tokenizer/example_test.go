package tokenizer_test

import (
	"fmt"

	"github.com/loomrt/loom/llm/tokenizer"
)

func Example() {
	tok := tokenizer.Default()
	prompt := tok.ApplyChatTemplate(nil, []tokenizer.Message{
		{Role: "system", Content: "You are terse."},
		{Role: "user", Content: "Say hello."},
	}, true)
	fmt.Println(len(prompt), "prompt tokens")

	ids := tok.Encode(nil, "the water is warm")
	d := tok.NewDecoder()
	var text []byte
	for _, id := range ids {
		text = d.Append(text, id) // as a stream would, one token at a time
	}
	fmt.Printf("%d tokens: %q\n", len(ids), d.Flush(text))
	// Output:
	// 34 prompt tokens
	// 4 tokens: "the water is warm"
}
