package tokenizer

// Message is one message of a chat: its role ("system", "user",
// "assistant", "tool", ...) and its text.
type Message struct {
	Role    string
	Content string
}

// ApplyChatTemplate appends the prompt of a chat to dst and returns it, in
// the ChatML layout:
//
//	<|im_start|>{role}\n{content}<|im_end|>\n   for each message
//	<|im_start|>assistant\n                      the generation prompt
//
// Each message is encoded on its own between special tokens, so a message
// yields the same tokens wherever it appears, and chats that start with
// the same messages (a shared system prompt) start with the same tokens:
// the prefix a KV cache can reuse. The generation prompt is added when
// addGenerationPrompt is true.
func (t *Tokenizer) ApplyChatTemplate(dst []uint32, msgs []Message, addGenerationPrompt bool) []uint32 {
	for _, m := range msgs {
		dst = append(dst, ImStart)
		dst = t.Encode(dst, m.Role)
		dst = append(dst, '\n')
		dst = t.Encode(dst, m.Content)
		dst = append(dst, ImEnd, '\n')
	}
	if addGenerationPrompt {
		dst = append(dst, ImStart)
		dst = t.Encode(dst, "assistant")
		dst = append(dst, '\n')
	}
	return dst
}
