//go:build interop

package workqueue_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/codec"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// seedQueue is the seed's NATSQueue (examples/llm/utils/nats_queue.py)
// as the sequence of JetStream calls it makes, on the npm nats client:
// stream_info else add_stream(name, subjects=[name.*]) with the server's
// default (limits) retention; publish to name.queue; a durable pull
// consumer "worker-group" on name.queue; fetch(1); ack before decoding.
const seedQueue = `
const { connect, AckPolicy } = require("nats");
const [url, mode, name, ...args] = process.argv.slice(2);
(async () => {
  const nc = await connect({ servers: url });
  const jsm = await nc.jetstreamManager();
  try { await jsm.streams.info(name); }
  catch (e) { await jsm.streams.add({ name, subjects: [name + ".*"] }); }
  const js = nc.jetstream();
  const subject = name + ".queue";
  if (mode === "enqueue") {
    for (const hx of args) await js.publish(subject, Buffer.from(hx, "hex"));
    console.log("enqueued", args.length);
  } else if (mode === "dequeue") {
    try { await jsm.consumers.info(name, "worker-group"); }
    catch (e) { await jsm.consumers.add(name, { durable_name: "worker-group", ack_policy: AckPolicy.Explicit, filter_subject: subject }); }
    const c = await js.consumers.get(name, "worker-group");
    for (let i = 0; i < Number(args[0]); i++) {
      const m = await c.next({ expires: 10000 });
      if (!m) { console.log("timeout"); break; }
      m.ack();
      console.log("job", Buffer.from(m.data).toString("hex"));
    }
  }
  await nc.drain();
})().catch((e) => { console.error(e); process.exit(1); });
`

// node runs the seed's sequence; it needs node and the npm nats package
// (NODE_PATH, as .ci/run sets it).
func node(t *testing.T, url string, args ...string) []string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatal("the seed interop test needs node and the npm nats package: apt-get install nodejs npm; npm install --prefix DIR nats@2; NODE_PATH=DIR/node_modules (.ci/run does it)")
	}
	script := filepath.Join(t.TempDir(), "seed.js")
	if err := os.WriteFile(script, []byte(seedQueue), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "node", append([]string{script, url}, args...)...).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "Cannot find module 'nats'") {
			t.Fatalf("node cannot load the npm nats package: npm install --prefix DIR nats@2 and set NODE_PATH=DIR/node_modules (.ci/run does it):\n%s", out)
		}
		t.Fatalf("node %v: %v\n%s", args, err, out)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

func hexJobs(t *testing.T, c codec.Codec, jobs ...job) []string {
	var out []string
	for _, j := range jobs {
		b, err := c.Marshal(nil, j)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, hex.EncodeToString(b))
	}
	return out
}

// TestInteropSeedQueueAndLoomShareAQueue runs the seed's sequence before
// and beside a Loom queue, with each codec.
func TestInteropSeedQueueAndLoomShareAQueue(t *testing.T) {
	for _, c := range []codec.Codec{codec.JSON, codec.MsgPack} {
		for _, seedFirst := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s, stream made by %s", c.Name(), map[bool]string{true: "the seed", false: "Loom"}[seedFirst]), func(t *testing.T) {
				ns, nc := startNATS(t, nil)
				cfg := testConfig(t)
				cfg.Codec = c
				cfg.MaxDeliver = 1
				if seedFirst {
					node(t, ns.ClientURL(), "enqueue", cfg.Name) // add_stream only
				}
				q := newQueue[job](t, nc, cfg)
				ctx := ctxFor(t, 30*time.Second)
				// Loom -> seed: Enqueue, then fetch(1) + ack with the seed's calls.
				for i := range 3 {
					if err := q.Enqueue(ctx, job{ID: i, Text: "loom"}); err != nil {
						t.Fatal(err)
					}
				}
				lines := node(t, ns.ClientURL(), "dequeue", cfg.Name, "3")
				if len(lines) != 3 {
					t.Fatalf("the seed's consumer got %v", lines)
				}
				for i, l := range lines {
					b, _ := hex.DecodeString(strings.TrimPrefix(l, "job "))
					var j job
					if err := c.Unmarshal(b, &j); err != nil || j.ID != i || j.Text != "loom" {
						t.Fatalf("seed got %q: %+v %v", l, j, err)
					}
					if c == codec.JSON && !json.Valid(b) {
						t.Fatalf("a JSON queue's job is not JSON: %q", b)
					}
				}
				// seed -> Loom: the seed publishes JSON (msgspec.json.encode).
				node(t, ns.ClientURL(), append([]string{"enqueue", cfg.Name}, hexJobs(t, codec.JSON, job{ID: 7, Text: "seed"})...)...)
				got := make(chan job, 1)
				consume(t, q, func(_ context.Context, j *workqueue.Job[job]) error {
					got <- j.Value
					return nil
				})
				if c == codec.JSON {
					select {
					case j := <-got:
						if j.ID != 7 || j.Text != "seed" {
							t.Fatalf("Loom got %+v", j)
						}
					case <-ctx.Done():
						t.Fatal("the seed's job never reached the Loom worker")
					}
					return
				}
				// A MessagePack queue cannot read the seed's JSON: the job is
				// dead-lettered with an error that says what to set.
				admin, _ := workqueue.NewAdmin(nc)
				testutil.Eventually(t, 20*time.Second, "the seed's JSON job is dead-lettered", func() bool {
					dl, err := admin.DeadLetters(ctx, cfg.Name, 1)
					return err == nil && len(dl) == 1 && strings.Contains(dl[0].Error, "set queue.codec=json")
				})
			})
		}
	}
}
