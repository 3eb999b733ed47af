package config

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestSettingsMaskSecrets(t *testing.T) {
	l, err := Load(WithDirs(), mapEnv(map[string]string{
		"NATS_AUTH_PASSWORD": "hunter2",
		"NATS_AUTH_USERNAME": "svc",
	}))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Setting{}
	for _, s := range l.Settings() {
		got[s.Key] = s
	}
	tests := []struct {
		name string
		key  string
		want Setting
	}{
		{"a set secret is masked", "nats.password", Setting{"nats.password", Mask, "env NATS_AUTH_PASSWORD"}},
		{"an unset secret stays empty", "nats.token", Setting{"nats.token", "", "default"}},
		{"a plain value is shown", "nats.user", Setting{"nats.user", "svc", "env NATS_AUTH_USERNAME"}},
		{"a list is comma-separated", "discovery.etcd_endpoints", Setting{"discovery.etcd_endpoints", "http://127.0.0.1:2379", "default"}},
		{"a duration is in Go syntax", "shutdown.timeout", Setting{"shutdown.timeout", "30s", "default"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got[tt.key] != tt.want {
				t.Errorf("got %+v, want %+v", got[tt.key], tt.want)
			}
		})
	}
	table := l.Table()
	if strings.Contains(table, "hunter2") {
		t.Errorf("Table shows the password:\n%s", table)
	}
	lines := strings.Split(strings.TrimSuffix(table, "\n"), "\n")
	if len(lines) != len(Keys())+1 || !strings.HasPrefix(lines[0], "KEY ") {
		t.Errorf("Table has %d lines, want a header and %d keys:\n%s", len(lines), len(Keys()), table)
	}
	if !slices.ContainsFunc(lines, func(line string) bool {
		return slices.Equal(strings.Fields(line), []string{"nats.password", Mask, "env", "NATS_AUTH_PASSWORD"})
	}) {
		t.Errorf("Table lacks the masked password line:\n%s", table)
	}
}

func TestMarkdown(t *testing.T) {
	md := Markdown()
	lines := strings.Split(strings.TrimSuffix(md, "\n"), "\n")
	if len(lines) != len(Keys())+2 {
		t.Fatalf("Markdown has %d lines, want %d", len(lines), len(Keys())+2)
	}
	for _, want := range []string{
		"| Key | Env | Default | Description |",
		"| `nats.url` | `LOOM_NATS_URL`, `NATS_SERVER` | `nats://127.0.0.1:4222` | NATS server URL;",
		"| `discovery.backend` | `LOOM_DISCOVERY_BACKEND`, `LOOM_DISCOVERY` | `memory` |",
		"One of `debug`, `info`, `warn`, `error`. |",
		"| `nats.password` | `LOOM_NATS_PASSWORD`, `NATS_AUTH_PASSWORD` |  | Password for user/password auth. Secret: `loom config` masks it. |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md)
		}
	}
	for i, line := range lines {
		if n := strings.Count(strings.ReplaceAll(line, `\|`, ""), "|"); n != 5 {
			t.Errorf("line %d has %d cell borders, want 5: %s", i+1, n, line)
		}
	}
}

const readmeFix = "run `go run ./cmd/loom config --markdown` and paste its output between the markers"

// checkREADME reports whether readme holds the table of keys, as generated,
// between its markers.
func checkREADME(readme string) error {
	const (
		start = "<!-- config-table:start -->"
		end   = "<!-- config-table:end -->"
	)
	_, rest, ok := strings.Cut(readme, start)
	if !ok {
		return fmt.Errorf("README.md lacks the markers %s and %s around the configuration table; add them, then %s", start, end, readmeFix)
	}
	table, _, ok := strings.Cut(rest, end)
	if !ok {
		return fmt.Errorf("README.md has %s but no %s after it; add it, then %s", start, end, readmeFix)
	}
	if got, want := strings.TrimSpace(table), strings.TrimSpace(Markdown()); got != want {
		return fmt.Errorf("README.md's configuration table is out of date; %s.\ngot:\n%s\nwant:\n%s", readmeFix, got, want)
	}
	return nil
}

// TestREADMEConfigTable keeps the README's table of keys generated from the
// code.
func TestREADMEConfigTable(t *testing.T) {
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatalf("the README's configuration table is checked against the code: %v", err)
	}
	if err := checkREADME(string(data)); err != nil {
		t.Fatal(err)
	}
}

func TestCheckREADME(t *testing.T) {
	tests := []struct {
		name   string
		readme string
		want   string // "" for no error
	}{
		{"the generated table between the markers passes",
			"# Loom\n\n<!-- config-table:start -->\n" + Markdown() + "<!-- config-table:end -->\n", ""},
		{"no markers fails and says to add them",
			"# Loom\n" + Markdown(), "lacks the markers"},
		{"a start marker alone fails",
			"<!-- config-table:start -->\n" + Markdown(), "no <!-- config-table:end --> after it"},
		{"a stale table fails and says how to regenerate it",
			"<!-- config-table:start -->\n| Key | Env | Default | Description |\n<!-- config-table:end -->",
			"out of date; run `go run ./cmd/loom config --markdown`"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkREADME(tt.readme)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}
