//go:build browser

// Package browsertest runs headless Chromium for the tests built with
// -tags browser (.ci/run installs Debian's chromium for them): a fresh
// profile, the flags that work as root on a closed network, and a bounded
// wait on a condition in the page.
package browsertest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Start starts headless Chromium on a fresh profile and returns a tab's
// context; the browser stops when the test ends. The browser itself is
// started by the first action run on the context. It fails the test,
// saying what to install, when no Chromium is found.
func Start(t testing.TB) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Fatal("the browser tests need Chromium: apt-get install -y chromium (Debian), or run go test without -tags browser")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1000),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	return ctx
}

// WaitDOM waits until the JavaScript expression cond is true in the page,
// for at most d, and returns how long it took. On failure it reports the
// text of the element with id show.
func WaitDOM(t testing.TB, ctx context.Context, d time.Duration, what, cond, show string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		left := d - time.Since(start)
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(max(left, time.Millisecond))))
		if err == nil {
			return time.Since(start)
		}
		// The page's JavaScript context can be replaced under a poll
		// that started while it loaded; poll again in the new one.
		if strings.Contains(err.Error(), "Cannot find context") && time.Since(start) < d {
			continue
		}
		text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.getElementById("`+show+`") || document.body).innerText`))
		t.Fatalf("%s: not within %s (%v); the page shows:\n%s", what, d, err, text)
	}
}
