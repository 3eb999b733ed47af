package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

const ttl = 2 * time.Second

// waitGone polls `loom ls` until the instance id is gone and returns how
// long that took.
func waitGone(t *testing.T, env []string, id string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if !ids(ls(t, env, "hello"))[id] {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("instance %s still listed %s after it stopped", id, limit)
	return 0
}

func waitListed(t *testing.T, env []string, want []string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		have := ids(ls(t, env, "hello"))
		all := true
		for _, id := range want {
			all = all && have[id]
		}
		if all {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("instances %v not all listed within %s", want, limit)
	return 0
}

// report is how often the clients that waitCalling watches report.
const report = "100ms"

// waitCalling waits until the client, started with "-report", report,
// reports a window that began after the time with calls that succeeded
// in it.
func waitCalling(t *testing.T, p *proc, after time.Time, within time.Duration) {
	t.Helper()
	every, _ := time.ParseDuration(report)
	deadline := time.Now().Add(within)
	for {
		for _, w := range windows(t, p) {
			if w.end.Add(-every).After(after) && w.ok > 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			_, errOut := p.output()
			t.Fatalf("the client reported no successful call after %s within %s; stderr:\n%s", after.Format(time.StampMilli), within, errOut)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var afterRE = regexp.MustCompile(`after=(\S+) words=(\d+)`)

// checkFailures asserts that every failure was a stream in flight on a
// dead instance, reported fast and clearly.
func checkFailures(t *testing.T, failures []string, max int) {
	t.Helper()
	if len(failures) > max {
		t.Fatalf("%d calls failed, more than the %d that can have been in flight:\n%s", len(failures), max, strings.Join(failures, "\n"))
	}
	for _, f := range failures {
		m := afterRE.FindStringSubmatch(f)
		if m == nil || !strings.Contains(f, "stream reset") {
			t.Errorf("failure is not a clear stream reset: %s", f)
			continue
		}
		if d, err := time.ParseDuration(m[1]); err != nil || d > 2*time.Second {
			t.Errorf("a failure took %s to surface: %s", m[1], f)
		}
		if m[2] == "0" {
			t.Errorf("a call failed before its first response instead of being retried elsewhere: %s", f)
		}
	}
}

// TestKillingAServerFailsOnlyItsStreamsInFlight is the request plane's
// multi-process test: two servers, a client calling steadily with 8
// callers, one server SIGKILLed.
func TestKillingAServerFailsOnlyItsStreamsInFlight(t *testing.T) {
	cp := up(t, "natskv")
	env := cp.componentEnv(ttl)
	victim, victimID := server(t, env)
	_, otherID := server(t, env)
	// The client starts knowing both servers, and calls before the kill.
	waitListed(t, env, []string{victimID, otherID}, 10*time.Second)
	client := start(t, env, "hello", "client", "-calls", "0", "-concurrency", "8", "-report", report)
	waitCalling(t, client, time.Now(), 30*time.Second)
	victim.signal(syscall.SIGKILL)
	victim.wait(5 * time.Second)
	time.Sleep(2 * time.Second) // calls keep going on the survivor
	client.signal(syscall.SIGTERM)
	if code := client.wait(30 * time.Second); code != 0 {
		t.Fatalf("client exited %d", code)
	}
	ok, failed, failures := clientSummary(t, client)
	t.Logf("SIGKILL of 1 of 2 servers under 8 callers: %d calls succeeded, %d failed", ok, failed)
	for _, f := range failures {
		t.Logf("  %s", f)
	}
	if ok < 50 {
		t.Fatalf("only %d calls succeeded", ok)
	}
	checkFailures(t, failures, 8)
	cp.stop()
}

func TestDiscoveryAcrossProcesses(t *testing.T) {
	for _, disc := range []string{"etcd", "natskv"} {
		t.Run(disc, func(t *testing.T) {
			cp := up(t, disc)
			env := cp.componentEnv(ttl)
			termed, termID := server(t, env)
			killed, killID := server(t, env)
			stay, stayID := server(t, env)
			waitListed(t, env, []string{termID, killID, stayID}, 10*time.Second)
			client := start(t, env, "hello", "client", "-calls", "0", "-concurrency", "4", "-report", report)
			waitCalling(t, client, time.Now(), 30*time.Second)

			// (a) SIGTERM: the instance leaves at once and no call fails;
			// `loom ls --watch` shows it go.
			watch := start(t, env, "loom", "ls", "--watch", "--json", "hello")
			watch.waitLine(`{"event":"added","instance":{"namespace":"hello"`, 10*time.Second)
			watch.waitLine(`{"event":"synced"}`, 10*time.Second) // after the three servers
			termed.signal(syscall.SIGTERM)
			gone := waitGone(t, env, termID, 5*time.Second)
			if code := termed.wait(15 * time.Second); code != 0 {
				t.Fatalf("SIGTERMed server exited %d", code)
			}
			t.Logf("(a) SIGTERM: instance left loom ls after %s", gone.Round(time.Millisecond))
			watch.waitLine(fmt.Sprintf(`{"event":"removed","instance":{"namespace":"hello","component":"greeter","endpoint":"greet","instance_id":%d`, mustHex(t, termID)), 5*time.Second)
			watch.signal(syscall.SIGINT)
			if code := watch.wait(10 * time.Second); code != 0 {
				t.Errorf("loom ls --watch exited %d on SIGINT", code)
			}
			if gone > time.Second {
				t.Errorf("(a) instance took %s to leave after SIGTERM, want under 1s", gone)
			}
			waitCalling(t, client, time.Now(), 30*time.Second) // on the servers left
			client.signal(syscall.SIGTERM)
			client.wait(30 * time.Second)
			okA, failedA, failuresA := clientSummary(t, client)
			t.Logf("(a) client: %d ok, %d failed", okA, failedA)
			if failedA != 0 {
				t.Fatalf("(a) calls failed during a graceful stop:\n%s", strings.Join(failuresA, "\n"))
			}

			// (b) SIGKILL: the instance leaves within TTL + 2s; only
			// streams in flight on it fail.
			client = start(t, env, "hello", "client", "-calls", "0", "-concurrency", "4", "-report", report)
			waitCalling(t, client, time.Now(), 30*time.Second)
			killed.signal(syscall.SIGKILL)
			killed.wait(5 * time.Second)
			gone = waitGone(t, env, killID, ttl+4*time.Second)
			t.Logf("(b) SIGKILL: instance left loom ls after %s (TTL %s)", gone.Round(time.Millisecond), ttl)
			if gone > ttl+2*time.Second {
				t.Errorf("(b) instance took %s to leave after SIGKILL, want under TTL+2s = %s", gone, ttl+2*time.Second)
			}
			client.signal(syscall.SIGTERM)
			client.wait(30 * time.Second)
			okB, failedB, failuresB := clientSummary(t, client)
			t.Logf("(b) client: %d ok, %d failed", okB, failedB)
			checkFailures(t, failuresB, 4)

			// (c) The discovery server is down for twice the TTL: the
			// server re-registers without restarting, the client keeps
			// calling and sees a server that starts afterwards: once the
			// server it knew from before leaves, its calls go to the new
			// one and none fails.
			client = start(t, env, "hello", "client", "-calls", "0", "-concurrency", "2", "-interval", "10ms", "-report", report)
			waitCalling(t, client, time.Now(), 30*time.Second)
			cp.stop()
			time.Sleep(2 * ttl)
			restart := time.Now()
			cp.start()
			waitListed(t, env, []string{stayID}, 30*time.Second)
			t.Logf("(c) discovery down %s: the surviving server was listed again %s after the restart", 2*ttl, time.Since(restart).Round(time.Millisecond))
			_, newID := server(t, env)
			waitListed(t, env, []string{stayID, newID}, 10*time.Second)
			stay.signal(syscall.SIGTERM)
			if code := stay.wait(15 * time.Second); code != 0 {
				t.Fatalf("(c) SIGTERMed server exited %d", code)
			}
			waitCalling(t, client, time.Now(), 30*time.Second) // on the new server alone
			client.signal(syscall.SIGTERM)
			client.wait(30 * time.Second)
			okC, failedC, failuresC := clientSummary(t, client)
			t.Logf("(c) client across the outage: %d ok, %d failed", okC, failedC)
			if failedC != 0 {
				_, clientErr := client.output()
				t.Errorf("(c) calls failed across the discovery outage:\n%s\nclient stderr:\n%s", strings.Join(failuresC, "\n"), clientErr)
			}
			cp.stop()
		})
	}
}

func mustHex(t *testing.T, s string) uint64 {
	t.Helper()
	var v uint64
	if _, err := fmt.Sscanf(s, "%x", &v); err != nil {
		t.Fatalf("instance id %q: %v", s, err)
	}
	return v
}
