package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// loomQueue runs `loom queue args...` against the server at url.
func loomQueue(t *testing.T, url, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(loomBin, append([]string{"queue"}, args...)...)
	cmd.Env = append(cmd.Environ(), "NATS_SERVER="+url, "LOOM_LOG_LEVEL=warn")
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("loom queue %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestQueueCommandsListPeekAddAndRepairDeadLetters(t *testing.T) {
	ns := testutil.StartNATS(t, embedded.NATSOptions{JetStream: true})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type req struct {
		RequestID string `json:"request_id"`
		Tokens    []int  `json:"tokens"`
	}
	cfg := workqueue.DefaultConfig("prefill_queue")
	cfg.Storage, cfg.MaxDeliver, cfg.Logger = "memory", 1, quietLog()
	q, err := workqueue.New[req](ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Shutdown(ctx)
	url := ns.ClientURL()

	out := loomQueue(t, url, "", "add", "prefill_queue", `{"request_id": "r1", "tokens": [1, 2, 3]}`)
	if !strings.Contains(out, "added job 1 to prefill_queue") {
		t.Errorf("add printed %q", out)
	}
	loomQueue(t, url, `{"request_id": "r2", "tokens": []}`+"\n"+`{"request_id": "r3", "tokens": [9]}`+"\n", "add", "prefill_queue")
	out = loomQueue(t, url, "", "ls")
	if !strings.Contains(out, "QUEUE") || !regexpMatch(`prefill_queue\s+3\s+3\s+0\s+0\s+0\s+msgpack\s+memory\s+1`, out) {
		t.Errorf("ls printed:\n%s", out)
	}
	// --json speaks snake_case, as every other --json does.
	out = loomQueue(t, url, "", "ls", "--json")
	var listed []map[string]any
	if err := json.Unmarshal([]byte(out), &listed); err != nil || len(listed) != 1 {
		t.Fatalf("ls --json printed %v:\n%s", err, out)
	}
	for key, want := range map[string]any{"name": "prefill_queue", "jobs": 3.0, "pending": 3.0, "in_flight": 0.0, "dead_letters": 0.0, "max_deliver": 1.0, "codec": "msgpack", "storage": "memory"} {
		if listed[0][key] != want {
			t.Errorf("ls --json: %q is %v, want %v:\n%s", key, listed[0][key], want, out)
		}
	}
	for key := range listed[0] {
		if key != strings.ToLower(key) {
			t.Errorf("ls --json has the key %q; want snake_case:\n%s", key, out)
		}
	}
	out = loomQueue(t, url, "", "info", "prefill_queue", "--json")
	if !strings.Contains(out, `"subject": `) || !strings.Contains(out, `"jobs": 3,`) || strings.Contains(out, `"Jobs"`) {
		t.Errorf("info --json printed:\n%s", out)
	}
	out = loomQueue(t, url, "", "add", "prefill_queue", "--json", `{"request_id": "r4", "tokens": []}`)
	var added struct {
		Queue string `json:"queue"`
		Seq   uint64 `json:"seq"`
	}
	if err := json.Unmarshal([]byte(out), &added); err != nil || added.Queue != "prefill_queue" || added.Seq != 4 {
		t.Errorf("add --json printed %q (%v)", out, err)
	}

	out = loomQueue(t, url, "", "peek", "prefill_queue", "-n", "2")
	if !strings.Contains(out, `{"request_id":"r1","tokens":[1,2,3]}`) || strings.Contains(out, "r3") {
		t.Errorf("peek -n 2 printed:\n%s", out)
	}

	// A typed worker takes the CLI's jobs; r2 fails once and is dead-lettered.
	c, err := q.Consume(workqueue.HandlerFunc[req](func(ctx context.Context, j *workqueue.Job[req]) error {
		if j.Value.RequestID == "r2" {
			return errors.New("no KV blocks free")
		}
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, _ := q.Info(ctx)
		if info.DeadLetters == 1 && info.Jobs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dead letter: %+v", info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	out = loomQueue(t, url, "", "dlq", "prefill_queue")
	if !regexpMatch(`1\s+2\s+failed\s+1\s+\S+\s+no KV blocks free\s+\{"request_id":"r2"`, out) {
		t.Errorf("dlq printed:\n%s", out)
	}
	out = loomQueue(t, url, "", "info", "prefill_queue")
	if !regexpMatch(`dead letters\s+1`, out) || !regexpMatch(`max deliver\s+1`, out) {
		t.Errorf("info printed:\n%s", out)
	}
	out = loomQueue(t, url, "", "dlq", "prefill_queue", "--requeue", "1")
	if !strings.Contains(out, "requeued 1 dead letters into prefill_queue") {
		t.Errorf("dlq --requeue printed %q", out)
	}
	j, err := q.Dequeue(ctx)
	if err != nil || j.Value.RequestID != "r2" {
		t.Fatalf("after requeue: %+v, %v", j, err)
	}
	_ = j.Ack(ctx)

	// A dead letter requeued already is gone: the error says so in
	// words, not as the server's API error, and nothing claims a requeue.
	again := exec.Command(loomBin, "queue", "dlq", "prefill_queue", "--requeue", "1")
	again.Env = append(again.Environ(), "NATS_SERVER="+url)
	ab, err := again.CombinedOutput()
	if err == nil || !strings.Contains(string(ab), "queue prefill_queue has no dead letter 1") || !strings.Contains(string(ab), "loom queue dlq prefill_queue") ||
		strings.Contains(string(ab), "API error") || strings.Contains(string(ab), "requeued 0") {
		t.Errorf("dlq --requeue of a dead letter requeued already: %v, %s\nwant a failure saying the queue has no dead letter 1", err, ab)
	}

	cmd := exec.Command(loomBin, "queue", "info", "nope")
	cmd.Env = append(cmd.Environ(), "NATS_SERVER="+url)
	b, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "no such queue: nope") {
		t.Errorf("info of a missing queue: %v, %s", err, b)
	}
}

func regexpMatch(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }

// A NATS server that cannot be reached is named with where its URL came
// from: here the file LOOM_CONFIG names, not NATS_SERVER.
func TestQueueCommandsNameTheFileThatSetTheNATSURL(t *testing.T) {
	dead := fmt.Sprintf("nats://127.0.0.1:%d", testutil.FreePort(t)) // nothing listens there
	file := filepath.Join(t.TempDir(), "loom.toml")
	if err := os.WriteFile(file, []byte("[nats]\nurl = \""+dead+"\"\nconnect_timeout = \"500ms\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(loomBin, "queue", "ls")
	cmd.Env = append(os.Environ(), "LOOM_CONFIG="+file, "NATS_SERVER=")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("loom queue ls with NATS down succeeded:\n%s", out)
	}
	if want := "check nats.url in " + file + ","; !strings.Contains(string(out), want) {
		t.Fatalf("loom queue ls with NATS down printed:\n%s\nwant it to say %q", out, want)
	}
}
