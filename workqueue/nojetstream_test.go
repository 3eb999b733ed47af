package workqueue_test

import (
	"strings"
	"testing"
	"time"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/workqueue"
)

// TestAServerWithoutJetStreamIsSaidSoWithWhatToDo: a queue, and `loom
// queue` through Admin, against a nats-server started without JetStream
// fail with an error saying JetStream is missing and how to get it, not
// with nats.go's bare "no responders available for request".
func TestAServerWithoutJetStreamIsSaidSoWithWhatToDo(t *testing.T) {
	ns := testutil.StartNATS(t, embedded.NATSOptions{})
	nc := connect(t, ns.ClientURL())
	check := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s succeeded on a server without JetStream", what)
		}
		for _, w := range []string{"JetStream", "-js"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v; want an error that says %q", what, err, w)
			}
		}
	}
	ctx := ctxFor(t, 10*time.Second)
	_, err := workqueue.New[job](ctx, nc, testConfig(t))
	check("New", err)
	a, err := workqueue.NewAdmin(nc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.List(ctx)
	check("Admin.List", err)
	_, err = a.Info(ctx, "jobs")
	check("Admin.Info", err)
	_, err = a.Peek(ctx, "jobs", 1)
	check("Admin.Peek", err)
}
