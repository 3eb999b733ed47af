package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
)

// TestLoomDashboardWithLoomUp runs `loom dashboard` with the environment
// `loom up` prints and reads its page and data.
func TestLoomDashboardWithLoomUp(t *testing.T) {
	up := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--discovery", "natskv", "--data-dir", t.TempDir())
	up.waitStderr(`^loom up: serving`)
	env, _ := up.lines()
	if !strings.Contains(strings.Join(env, "\n"), "LOOM_STATUS_PORT=-1") {
		t.Fatalf("loom up printed %q, lacking LOOM_STATUS_PORT=-1", env)
	}
	dash := startLoom(t, append(env, "LOOM_LOG_LEVEL=warn"), "dashboard", "--addr", "127.0.0.1:0", "--nats-monitor", "off")
	url := dash.waitStderr(`^loom dashboard: (http://127\.0\.0\.1:\d+) \(natskv discovery, NATS nats://`)[1]

	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "<title>Loom dashboard</title>") {
		t.Fatalf("GET /: %s\n%.300s", resp.Status, page)
	}
	for _, asset := range []string{"/app.js", "/style.css"} {
		resp, err := http.Get(url + asset)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", asset, resp.Status)
		}
	}
	resp, err = http.Get(url + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Discovery string `json:"discovery"`
		NATS      struct {
			URL string `json:"url"`
		} `json:"nats"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st.Discovery != "natskv" || !strings.HasPrefix(st.NATS.URL, "nats://127.0.0.1:") {
		t.Fatalf("GET /api/state: %v %+v", err, st)
	}
	_ = dash.cmd.Process.Signal(syscall.SIGTERM)
	dash.exit()
	_ = up.cmd.Process.Signal(syscall.SIGTERM)
	up.exit()
}
