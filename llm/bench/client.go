package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Message is one chat message.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatRequest struct {
	Model         string    `json:"model"`
	Messages      []Message `json:"messages"`
	MaxTokens     int       `json:"max_tokens"`
	Stream        bool      `json:"stream"`
	StreamOptions struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// chunk is what the generator reads of a chat.completion.chunk.
type chunk struct {
	ID      string `json:"id"`
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens        int `json:"prompt_tokens"`
		CompletionTokens    int `json:"completion_tokens"`
		PromptTokensDetails *struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
	Error *apiError `json:"error"`
}

type apiError struct {
	Message string `json:"message"`
	Type    string `json:"type"`
}

// Outcome is what one request came to.
type Outcome struct {
	// ID is the completion's id as the server streamed it.
	ID    string
	Start time.Time
	// TTFT is the time to the first content; E2E to the end of the stream.
	TTFT, E2E time.Duration
	// ITL holds the gaps between consecutive content chunks.
	ITL []time.Duration
	// Text is the generated content.
	Text         string
	OutputTokens int
	PromptTokens int
	CachedTokens int
	FinishReason string
	// Worker is the serving worker as the server reported it (the
	// X-Loom-Worker response header), or "".
	Worker string
	// Migrations is how many times the server moved the request to
	// another worker, when it reports it (the X-Loom-Migrations header or
	// trailer), or when an in-process run learns it from its router.
	Migrations int
	// ErrKind classifies a failure ("" for success); Err says more.
	ErrKind string
	Err     error
}

// Error kinds of Outcome.ErrKind and Result.Errors. An HTTP status
// without a kind of its own is "http_" and the code.
const (
	ErrKindConnect   = "connect"   // dialing or sending failed
	ErrKindTimeout   = "timeout"   // no end within the request bound
	ErrKindStream    = "stream"    // the stream broke or was malformed
	ErrKindServer    = "server"    // an error event inside the stream
	ErrKindCancelled = "cancelled" // the run was stopped
	ErrKindNoDone    = "no_done"   // the stream ended without [DONE]
	ErrKindShed429   = "http_429"  // too many requests
	ErrKindShed529   = "http_529"  // overloaded
	headerWorker     = "X-Loom-Worker"
	headerMigrations = "X-Loom-Migrations"
)

// client sends streaming chat completions to one server.
type client struct {
	http  *http.Client
	url   string // .../v1/chat/completions
	model string
}

// newTransport returns an HTTP/1.1 transport keeping up to conns idle
// connections to the server, so that each in-flight request reuses one
// instead of dialing.
func newTransport(conns int) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		WriteBufferSize:     16 << 10,
		ReadBufferSize:      16 << 10,
	}
}

// do sends one request and reads its stream to the end.
func (c *client) do(ctx context.Context, msgs []Message, maxTokens int) (o Outcome) {
	o.Start = time.Now()
	var req chatRequest
	req.Model, req.Messages, req.MaxTokens, req.Stream = c.model, msgs, maxTokens, true
	req.StreamOptions.IncludeUsage = true
	body, err := json.Marshal(&req)
	if err != nil {
		o.ErrKind, o.Err = ErrKindConnect, err
		return o
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		o.ErrKind, o.Err = ErrKindConnect, err
		return o
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "text/event-stream")
	resp, err := c.http.Do(hreq)
	if err != nil {
		o.ErrKind, o.Err = classifyCtx(ctx, ErrKindConnect), err
		return o
	}
	defer resp.Body.Close()
	o.Worker = resp.Header.Get(headerWorker)
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		o.ErrKind = "http_" + strconv.Itoa(resp.StatusCode)
		o.Err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(msg)))
		return o
	}
	c.readStream(ctx, resp, &o)
	if o.ErrKind == "" {
		// Drain so the connection goes back to the pool.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		if m := resp.Trailer.Get(headerMigrations); m != "" {
			o.Migrations, _ = strconv.Atoi(m)
		} else if m := resp.Header.Get(headerMigrations); m != "" {
			o.Migrations, _ = strconv.Atoi(m)
		}
	}
	return o
}

func (c *client) readStream(ctx context.Context, resp *http.Response, o *Outcome) {
	sse := NewSSEReader(resp.Body)
	var text strings.Builder
	var last time.Time
	chunks := 0
	for {
		data, err := sse.Next()
		if err != nil {
			o.ErrKind, o.Err = classifyCtx(ctx, ErrKindStream), fmt.Errorf("reading the event stream after %d chunks: %w", chunks, err)
			if errors.Is(err, io.EOF) {
				o.ErrKind = ErrKindNoDone
			}
			return
		}
		if string(data) == "[DONE]" {
			break
		}
		var ch chunk
		if err := json.Unmarshal(data, &ch); err != nil {
			o.ErrKind, o.Err = ErrKindStream, fmt.Errorf("chunk %d is not JSON (%v): %.200q", chunks, err, data)
			return
		}
		chunks++
		if o.ID == "" {
			o.ID = ch.ID
		}
		if ch.Error != nil {
			o.ErrKind, o.Err = ErrKindServer, fmt.Errorf("error event: %s (%s)", ch.Error.Message, ch.Error.Type)
			return
		}
		for _, c := range ch.Choices {
			if c.Delta.Content != "" {
				now := time.Now()
				if last.IsZero() {
					o.TTFT = now.Sub(o.Start)
				} else {
					o.ITL = append(o.ITL, now.Sub(last))
				}
				last = now
				o.OutputTokens++
				text.WriteString(c.Delta.Content)
			}
			if c.FinishReason != nil && *c.FinishReason != "" {
				o.FinishReason = *c.FinishReason
			}
		}
		if u := ch.Usage; u != nil {
			o.PromptTokens, o.OutputTokens = u.PromptTokens, u.CompletionTokens
			if u.PromptTokensDetails != nil {
				o.CachedTokens = u.PromptTokensDetails.CachedTokens
			}
		}
	}
	o.E2E = time.Since(o.Start)
	if last.IsZero() {
		o.TTFT = o.E2E
	}
	o.Text = text.String()
}

func classifyCtx(ctx context.Context, kind string) string {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return ErrKindTimeout
	case ctx.Err() != nil:
		return ErrKindCancelled
	}
	return kind
}

// listModels returns the ids GET /v1/models answers with.
func listModels(ctx context.Context, hc *http.Client, base string) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/models", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: listing models at %s: %w (is the server up?)", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: GET %s/v1/models answered HTTP %d (pass the model name with Config.Model / --model)", base, resp.StatusCode)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&list); err != nil {
		return nil, fmt.Errorf("bench: GET %s/v1/models: %w", base, err)
	}
	ids := make([]string, 0, len(list.Data))
	for _, m := range list.Data {
		ids = append(ids, m.ID)
	}
	return ids, nil
}
