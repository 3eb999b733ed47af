package natsconn_test

import (
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/metrics"
	"github.com/loomrt/loom/natsconn"
)

// restricted connects, with a debug logger writing to buf and the
// metrics m, as a user that may publish and subscribe only under
// allowed.> (and its inboxes).
func restricted(t *testing.T, buf *testutil.SyncBuffer, m *metrics.Metrics) *nats.Conn {
	t.Helper()
	allowed := &server.SubjectPermission{Allow: []string{"allowed.>", "_INBOX.>"}}
	ns := startNATS(t, embedded.NATSOptions{
		Users: map[string]string{"app": "s3cret"},
		Configure: func(o *server.Options) {
			o.Users[0].Permissions = &server.Permissions{Publish: allowed, Subscribe: allowed}
		},
	})
	cfg := natsCfg(ns.ClientURL())
	cfg.User, cfg.Password = "app", "s3cret"
	logger := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	nc, err := natsconn.Connect(t.Context(), cfg, natsconn.WithLogger(logger), natsconn.WithMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// refused publishes n messages to each subject, which the server
// refuses, and waits until the connection has seen every refusal.
func refused(t *testing.T, nc *nats.Conn, m *metrics.Metrics, n int, subjects ...string) {
	t.Helper()
	before := violations(t, m, metrics.PermissionPublish)
	for range n {
		for _, s := range subjects {
			if err := nc.Publish(s, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	want := before + n*len(subjects)
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("%d refusals counted", want), func() bool {
		return violations(t, m, metrics.PermissionPublish) == want
	})
}

func violations(t *testing.T, m *metrics.Metrics, kind string) int {
	t.Helper()
	return int(testutil.Metric(t, m.Registry(), "loom_nats_permission_violations_total", "kind", kind))
}

var moreRe = regexp.MustCompile(`\bmore=(\d+)`)

// more sums the more= of the log's lines that hold every one of parts.
func more(log string, parts ...string) int {
	n := 0
	for line := range strings.Lines(log) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if m := moreRe.FindStringSubmatch(line); all && m != nil {
			v, _ := strconv.Atoi(m[1])
			n += v
		}
	}
	return n
}

const (
	refusalMsg = `msg="NATS permissions violation"`
	repeatMsg  = `msg="NATS permissions violation repeated"`
)

// TestARefusedPublisherDoesNotFloodTheLog: every asynchronous error was
// an error line of its own, and nothing counted them. A publisher the
// server refuses (no permission on the subject) at a thousand messages a
// second wrote a thousand error lines a second. Now the first refusal of
// a subject is logged at once, its repeats within a window are summed up
// in one line at the window's end or at the close, each refusal is
// counted in loom_nats_permission_violations_total, and a closed
// connection leaves no timer behind.
func TestARefusedPublisherDoesNotFloodTheLog(t *testing.T) {
	t.Run("repeats within the window are one line, written at the close", func(t *testing.T) {
		defer natsconn.SetRepeatLogWindow(time.Hour)()
		var buf testutil.SyncBuffer
		m := metrics.New()
		nc := restricted(t, &buf, m)
		const n = 500
		refused(t, nc, m, n, "denied.a")
		log := buf.String()
		if got := logLines(log, "denied.a"); got != 1 {
			t.Errorf("%d refusals logged %d lines; want 1:\n%.2000s", n, got, log)
		}
		if logLines(log, refusalMsg, "level=ERROR", "kind=publish", "subject=denied.a", `Publish to \"denied.a\"`) != 1 {
			t.Errorf("the first refusal not logged as an error with its kind, subject and error:\n%s", log)
		}
		if got := logLines(log, repeatMsg); got != 0 {
			t.Errorf("a summary before the window ended:\n%s", log)
		}
		if natsconn.SummaryTimers() != 1 {
			t.Errorf("%d summary timers armed; want 1", natsconn.SummaryTimers())
		}

		nc.Close()
		testutil.Eventually(t, 10*time.Second, "the repeats summed up at the close", func() bool {
			return logLines(buf.String(), repeatMsg, "kind=publish", "subject=denied.a", fmt.Sprintf("more=%d", n-1), "since=") == 1
		})
		testutil.Eventually(t, 10*time.Second, "the summary timer stopped", func() bool { return natsconn.SummaryTimers() == 0 })
	})

	t.Run("repeats are summed up once a window while the connection is open", func(t *testing.T) {
		defer natsconn.SetRepeatLogWindow(20 * time.Millisecond)()
		var buf testutil.SyncBuffer
		m := metrics.New()
		nc := restricted(t, &buf, m)
		const n = 100
		refused(t, nc, m, n, "denied.b")
		testutil.Eventually(t, 10*time.Second, "every refusal logged or summed up", func() bool {
			log := buf.String()
			return logLines(log, refusalMsg, "subject=denied.b")+more(log, repeatMsg, "subject=denied.b") == n
		})
		log := buf.String()
		if logLines(log, repeatMsg, "subject=denied.b") == 0 {
			t.Errorf("no summary line:\n%.2000s", log)
		}
		// Quiet for a window, the subject is forgotten and the timer stops.
		testutil.Eventually(t, 10*time.Second, "the summary timer stopped", func() bool { return natsconn.SummaryTimers() == 0 })
		refused(t, nc, m, 1, "denied.b")
		testutil.Eventually(t, 10*time.Second, "a refusal after a quiet window logged at once", func() bool {
			return logLines(buf.String(), refusalMsg, "subject=denied.b") == logLines(log, refusalMsg, "subject=denied.b")+1
		})
	})

	t.Run("subjects beyond those tracked are counted in one line", func(t *testing.T) {
		defer natsconn.SetRepeatLogWindow(time.Hour)()
		defer natsconn.SetRepeatLogKeys(3)()
		var buf testutil.SyncBuffer
		m := metrics.New()
		nc := restricted(t, &buf, m)
		var subjects []string
		for i := range 10 {
			subjects = append(subjects, fmt.Sprintf("denied.%d", i))
		}
		refused(t, nc, m, 2, subjects...)
		log := buf.String()
		if got := logLines(log, "denied."); got != 3 {
			t.Errorf("refusals on %d subjects logged %d lines; want 3, the subjects tracked:\n%s", len(subjects), got, log)
		}
		nc.Close()
		testutil.Eventually(t, 10*time.Second, "the untracked subjects summed up at the close", func() bool {
			return logLines(buf.String(), "more subjects than are tracked", "more=14", "tracked=3") == 1 &&
				more(buf.String(), repeatMsg) == 3
		})
	})
}

// TestAQuietCloseStillEndsTheSummaryTimer: the runtime and the loom
// command clear the closed handler before they close their connection,
// so that the close is not logged as a failure. The summary timer, which
// that handler stopped, then lived on after the close, and the repeats it
// held were logged a window later, if the process still ran. The close is
// now seen whatever handlers are set.
func TestAQuietCloseStillEndsTheSummaryTimer(t *testing.T) {
	defer natsconn.SetRepeatLogWindow(time.Hour)()
	var buf testutil.SyncBuffer
	m := metrics.New()
	nc := restricted(t, &buf, m)
	refused(t, nc, m, 3, "denied.q")
	nc.SetClosedHandler(nil)
	nc.SetDisconnectErrHandler(nil)
	nc.Close()
	testutil.Eventually(t, 10*time.Second, "the repeats summed up at the close", func() bool {
		return logLines(buf.String(), repeatMsg, "subject=denied.q", "more=2") == 1
	})
	testutil.Eventually(t, 10*time.Second, "the summary timer stopped", func() bool { return natsconn.SummaryTimers() == 0 })
}

// TestACleanCloseAfterARefusalIsNotAnError: nats.go keeps a refused
// publish as the connection's last error, and the closed handler logged
// any last error as the cause of the close: a program that had one
// publish refused, ever, logged its clean shutdown as an error. A last
// error that never closes a connection is now no cause.
func TestACleanCloseAfterARefusalIsNotAnError(t *testing.T) {
	var buf testutil.SyncBuffer
	m := metrics.New()
	nc := restricted(t, &buf, m)
	refused(t, nc, m, 1, "denied.c")
	nc.Close()
	testutil.Eventually(t, 10*time.Second, "the close logged", func() bool {
		return logLines(buf.String(), "NATS connection closed") == 1
	})
	if log := buf.String(); logLines(log, "level=DEBUG", "NATS connection closed") != 1 {
		t.Errorf("a clean close logged as more than debug:\n%s", log)
	}
}

// TestARefusedSubscriptionIsCountedAsOne: a refused subscription counts
// under kind subscribe, with its subject.
func TestARefusedSubscriptionIsCountedAsOne(t *testing.T) {
	var buf testutil.SyncBuffer
	m := metrics.New()
	nc := restricted(t, &buf, m)
	if _, err := nc.SubscribeSync("denied.sub"); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the refused subscription counted", func() bool {
		return violations(t, m, metrics.PermissionSubscribe) == 1
	})
	if n := logLines(buf.String(), refusalMsg, "kind=subscribe", "subject=denied.sub"); n != 1 {
		t.Errorf("the refused subscription logged %d lines; want 1:\n%s", n, buf.String())
	}
	if n := violations(t, m, metrics.PermissionPublish); n != 0 {
		t.Errorf("%d publishes counted as refused; want 0", n)
	}
}

// TestOtherAsynchronousErrorsAreFoldedToo: an asynchronous error that is
// not a permission violation, here a subscription over the server's
// max_subscriptions, is folded the same way, keyed by its text.
func TestOtherAsynchronousErrorsAreFoldedToo(t *testing.T) {
	defer natsconn.SetRepeatLogWindow(time.Hour)()
	ns := startNATS(t, embedded.NATSOptions{Configure: func(o *server.Options) { o.MaxSubs = 1 }})
	var buf testutil.SyncBuffer
	nc, err := natsconn.Connect(t.Context(), natsCfg(ns.ClientURL()), natsconn.WithLogger(slog.New(slog.NewTextHandler(&buf, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	const subs = 20
	for range subs {
		if _, err := nc.SubscribeSync("a.b"); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// The errors come before the flush's answer, and the close after them.
	nc.Close()
	testutil.Eventually(t, 10*time.Second, "the repeats summed up at the close", func() bool {
		return logLines(buf.String(), `msg="NATS asynchronous error repeated"`, "maximum subscriptions exceeded") == 1
	})
	log := buf.String()
	if n := logLines(log, "NATS asynchronous error", "maximum subscriptions exceeded"); n != 2 {
		t.Errorf("%d refused subscriptions logged %d lines; want 2, the first and the summary:\n%s", subs-1, n, log)
	}
	if n := more(log, "maximum subscriptions exceeded"); n != subs-2 {
		t.Errorf("the summary says %d more; want %d:\n%s", n, subs-2, log)
	}
}
