package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// mapEnv is an environment for WithEnv.
func mapEnv(env map[string]string) Option {
	return WithEnv(func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	})
}

// writeFile writes a file under dir and returns its path.
func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// layers sets up every layer of Load in a temporary directory; a field left
// empty leaves its layer out.
type layers struct {
	defaultsDir string            // text of defaults/50-a.toml
	etcDir      string            // text of etc/50-a.toml
	configFile  string            // text of the file LOOM_CONFIG names
	env         map[string]string // environment
	values      [][2]string       // WithValue options
}

func (ly layers) load(t *testing.T) (*Loaded, string, error) {
	t.Helper()
	root := t.TempDir()
	defaults, etc := filepath.Join(root, "defaults"), filepath.Join(root, "etc")
	if ly.defaultsDir != "" {
		writeFile(t, defaults, "50-a.toml", ly.defaultsDir)
	}
	if ly.etcDir != "" {
		writeFile(t, etc, "50-a.toml", ly.etcDir)
	}
	env := map[string]string{}
	for k, v := range ly.env {
		env[k] = v
	}
	if ly.configFile != "" {
		env[ConfigEnv] = writeFile(t, root, "loom.toml", ly.configFile)
	}
	opts := []Option{WithDirs(defaults, etc), mapEnv(env)}
	for _, kv := range ly.values {
		opts = append(opts, WithValue(kv[0], kv[1]))
	}
	l, err := Load(opts...)
	return l, root, err
}

func TestLoadPrecedence(t *testing.T) {
	const (
		inDefaults = "[nats]\nurl = \"nats://defaults:4222\"\n"
		inEtc      = "[nats]\nurl = \"nats://etc:4222\"\n"
		inConfig   = "nats.url = \"nats://config:4222\"\n"
	)
	tests := []struct {
		name       string
		layers     layers
		want       string
		wantSource string // "FILE:rel" for a file under the test's root
	}{
		{"the default applies when nothing is set", layers{},
			"nats://127.0.0.1:4222", "default"},
		{"the defaults dir beats the default", layers{defaultsDir: inDefaults},
			"nats://defaults:4222", "FILE:defaults/50-a.toml"},
		{"the etc dir beats the defaults dir", layers{defaultsDir: inDefaults, etcDir: inEtc},
			"nats://etc:4222", "FILE:etc/50-a.toml"},
		{"LOOM_CONFIG beats the etc dir", layers{defaultsDir: inDefaults, etcDir: inEtc, configFile: inConfig},
			"nats://config:4222", "FILE:loom.toml"},
		{"an env alias beats LOOM_CONFIG",
			layers{etcDir: inEtc, configFile: inConfig, env: map[string]string{"NATS_SERVER": "nats://alias:4222"}},
			"nats://alias:4222", "env NATS_SERVER"},
		{"the LOOM_ env beats an alias",
			layers{configFile: inConfig, env: map[string]string{"NATS_SERVER": "nats://alias:4222", "LOOM_NATS_URL": "nats://loom:4222"}},
			"nats://loom:4222", "env LOOM_NATS_URL"},
		{"code beats the environment",
			layers{configFile: inConfig, env: map[string]string{"LOOM_NATS_URL": "nats://loom:4222"},
				values: [][2]string{{"nats.url", "nats://code:4222"}}},
			"nats://code:4222", "code"},
		{"the last WithValue wins",
			layers{values: [][2]string{{"nats.url", "nats://first:4222"}, {"nats.url", "nats://last:4222"}}},
			"nats://last:4222", "code"},
		{"an empty env var counts as unset",
			layers{etcDir: inEtc, env: map[string]string{"LOOM_NATS_URL": "", "NATS_SERVER": ""}},
			"nats://etc:4222", "FILE:etc/50-a.toml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, root, err := tt.layers.load(t)
			if err != nil {
				t.Fatal(err)
			}
			if got := l.Config.NATS.URL; got != tt.want {
				t.Errorf("nats.url = %q, want %q", got, tt.want)
			}
			want := tt.wantSource
			if rel, ok := strings.CutPrefix(want, "FILE:"); ok {
				want = filepath.Join(root, rel)
			}
			if got := l.Source("nats.url"); got != want {
				t.Errorf("source = %q, want %q", got, want)
			}
		})
	}
}

func TestLoadReadsFilesInNameOrder(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "20-b.toml", "[log]\nlevel = \"warn\"\n")
	writeFile(t, dir, "10-a.toml", "[log]\nlevel = \"debug\"\nformat = \"json\"\n")
	writeFile(t, dir, "30-c.conf", "this is not TOML and not read")
	writeFile(t, dir, "sub.toml/inner.toml", "[log]\nlevel = \"error\"\n")
	l, err := Load(WithDirs(dir, filepath.Join(dir, "missing")), mapEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	if l.Config.Log.Level != "warn" || l.Config.Log.Format != "json" {
		t.Errorf("log = %+v, want level warn from 20-b and format json from 10-a", l.Config.Log)
	}
	want := []string{filepath.Join(dir, "10-a.toml"), filepath.Join(dir, "20-b.toml")}
	if !reflect.DeepEqual(l.Files, want) {
		t.Errorf("Files = %q, want %q", l.Files, want)
	}
}

func TestLoadDefaultsMatchDefault(t *testing.T) {
	l, err := Load(WithDirs(), mapEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	if want := Default(); !reflect.DeepEqual(l.Config, want) {
		t.Errorf("Load with no layers = %+v, want %+v", l.Config, want)
	}
	for _, k := range Keys() {
		if got := l.Source(k.Name); got != SourceDefault {
			t.Errorf("source of %s = %q, want default", k.Name, got)
		}
	}
	if err := l.Config.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

func TestLoadTypes(t *testing.T) {
	tests := []struct {
		name   string
		layers layers
		check  func(c *Config) any // returns the value to compare
		want   any
	}{
		{"a string from env", layers{env: map[string]string{"LOOM_NATS_NAME": "worker-1"}},
			func(c *Config) any { return c.NATS.Name }, "worker-1"},
		{"a list from env is comma-separated and trimmed",
			layers{env: map[string]string{"ETCD_ENDPOINTS": " http://a:2379, http://b:2379 ,"}},
			func(c *Config) any { return c.Discovery.EtcdEndpoints }, []string{"http://a:2379", "http://b:2379"}},
		{"a list from a TOML array", layers{etcDir: "[discovery]\netcd_endpoints = [\"http://a:2379\", \"http://b:2379\"]\n"},
			func(c *Config) any { return c.Discovery.EtcdEndpoints }, []string{"http://a:2379", "http://b:2379"}},
		{"a list from a TOML comma string", layers{etcDir: "[discovery]\netcd_endpoints = \"http://a:2379,http://b:2379\"\n"},
			func(c *Config) any { return c.Discovery.EtcdEndpoints }, []string{"http://a:2379", "http://b:2379"}},
		{"an empty list from code", layers{values: [][2]string{{"discovery.etcd_endpoints", ""}}},
			func(c *Config) any { return c.Discovery.EtcdEndpoints }, []string{}},
		{"an int from env", layers{env: map[string]string{"LOOM_NATS_MAX_RECONNECTS": "60"}},
			func(c *Config) any { return c.NATS.MaxReconnects }, 60},
		{"an int from TOML", layers{etcDir: "[request_plane]\nport = 8080\n"},
			func(c *Config) any { return c.RequestPlane.Port }, 8080},
		{"an int from a TOML string", layers{etcDir: "[request_plane]\nport = \"8081\"\n"},
			func(c *Config) any { return c.RequestPlane.Port }, 8081},
		{"a duration from env", layers{env: map[string]string{"LOOM_SHUTDOWN_TIMEOUT": "1m30s"}},
			func(c *Config) any { return c.Shutdown.Timeout }, 90 * time.Second},
		{"a duration from a TOML string", layers{etcDir: "[shutdown]\ngrace_period = \"250ms\"\n"},
			func(c *Config) any { return c.Shutdown.GracePeriod }, 250 * time.Millisecond},
		{"a duration from a TOML integer is seconds", layers{etcDir: "[shutdown]\ngrace_period = 15\n"},
			func(c *Config) any { return c.Shutdown.GracePeriod }, 15 * time.Second},
		{"an enum value from an alias", layers{env: map[string]string{"LOOM_DISCOVERY": "natskv"}},
			func(c *Config) any { return c.Discovery.Backend }, "natskv"},
		{"a dotted key at the top of a file", layers{etcDir: "client.router = \"random\"\n"},
			func(c *Config) any { return c.Client.Router }, "random"},
		{"an inline table", layers{etcDir: "client = { router = \"power_of_two\" }\n"},
			func(c *Config) any { return c.Client.Router }, "power_of_two"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, _, err := tt.layers.load(t)
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.check(&l.Config); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

// TestKinds covers the leaf types Config does not use yet (bool, float) and
// the edges of the others.
func TestKinds(t *testing.T) {
	tests := []struct {
		name    string
		kind    *kind
		in      any  // parsed as from env unless file
		file    bool // in is as decoded from TOML
		want    any
		wantErr string
	}{
		{"bool parses true", kindBool, "true", false, true, ""},
		{"bool parses 0", kindBool, "0", false, false, ""},
		{"bool takes a TOML bool", kindBool, true, true, true, ""},
		{"bool takes a TOML string", kindBool, "false", true, false, ""},
		{"bool rejects yes", kindBool, "yes", false, nil, "not a boolean; use true or false"},
		{"bool rejects a TOML int", kindBool, int64(1), true, nil, "not a boolean"},
		{"float parses", kindFloat, "0.25", false, 0.25, ""},
		{"float takes a TOML int", kindFloat, int64(2), true, 2.0, ""},
		{"float takes a TOML float", kindFloat, 1.5, true, 1.5, ""},
		{"float rejects NaN", kindFloat, "NaN", false, nil, "not a number"},
		{"float rejects words", kindFloat, "half", false, nil, "not a number; use decimal syntax like 0.5"},
		{"int rejects a fraction", kindInt, "1.5", false, nil, "not an integer"},
		{"int rejects a TOML float", kindInt, 1.5, true, nil, "not an integer"},
		{"duration rejects a bare number in env", kindDuration, "30", false, nil, "not a duration; use Go syntax like 30s or 1m30s"},
		{"duration rejects a TOML float", kindDuration, 1.5, true, nil, "integer number of seconds"},
		{"duration rejects overflowing seconds", kindDuration, int64(1 << 62), true, nil, "too many seconds"},
		{"string rejects a TOML int", kindString, int64(5), true, nil, "not a string; quote it"},
		{"list rejects a TOML int list", kindStrings, []any{int64(1)}, true, nil, "not a list of strings"},
		{"list rejects a TOML int", kindStrings, int64(1), true, nil, "not a list of strings"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got any
			var err error
			if s, ok := tt.in.(string); ok && !tt.file {
				got, err = tt.kind.parse(s)
			} else {
				got, err = tt.kind.fromTOML(tt.in)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
			if back, err := tt.kind.parse(tt.kind.format(got)); err != nil || !reflect.DeepEqual(back, got) {
				t.Errorf("format %q does not parse back: %v, %v", tt.kind.format(got), back, err)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name   string
		layers layers
		want   []string // substrings; "FILE:rel" for a file under the test's root
	}{
		{"a bad duration in env names key, value, variable and syntax",
			layers{env: map[string]string{"LOOM_SHUTDOWN_TIMEOUT": "5 parsecs"}},
			[]string{`config: shutdown.timeout = "5 parsecs" (from env LOOM_SHUTDOWN_TIMEOUT): not a duration; use Go syntax like 30s or 1m30s`}},
		{"a bad enum value from an alias lists the allowed values",
			layers{env: map[string]string{"LOOM_DISCOVERY": "consul"}},
			[]string{`config: discovery.backend = "consul" (from env LOOM_DISCOVERY): not one of memory, etcd, natskv`}},
		{"a bad int in env",
			layers{env: map[string]string{"LOOM_NATS_MAX_RECONNECTS": "many"}},
			[]string{`config: nats.max_reconnects = "many" (from env LOOM_NATS_MAX_RECONNECTS): not an integer`}},
		{"a negative timeout in env",
			layers{env: map[string]string{"LOOM_SHUTDOWN_GRACE_PERIOD": "-1s"}},
			[]string{`config: shutdown.grace_period = "-1s" (from env LOOM_SHUTDOWN_GRACE_PERIOD): must be at least 0s`}},
		{"an int above its max",
			layers{env: map[string]string{"LOOM_REQUEST_PLANE_PORT": "70000"}},
			[]string{`config: request_plane.port = "70000" (from env LOOM_REQUEST_PLANE_PORT): must be at most 65535`}},
		{"an int below its min",
			layers{env: map[string]string{"LOOM_NATS_MAX_RECONNECTS": "-2"}},
			[]string{`config: nats.max_reconnects = "-2" (from env LOOM_NATS_MAX_RECONNECTS): must be at least -1`}},
		{"a lease TTL under a second",
			layers{env: map[string]string{"LOOM_DISCOVERY_LEASE_TTL": "500ms"}},
			[]string{`config: discovery.lease_ttl = "500ms" (from env LOOM_DISCOVERY_LEASE_TTL): must be at least 1s`}},
		{"a bad value from code",
			layers{values: [][2]string{{"log.level", "verbose"}}},
			[]string{`config: log.level = "verbose" (from code): not one of debug, info, warn, error`}},
		{"an unknown key from code",
			layers{values: [][2]string{{"nats.urll", "nats://x:4222"}}},
			[]string{`config: nats.urll = "nats://x:4222" (from code): unknown key; did you mean nats.url?`}},
		{"a number where a file wants a string",
			layers{etcDir: "[nats]\nname = 5\n"},
			[]string{`config: nats.name = "5" (from `, `FILE:etc/50-a.toml): not a string; quote it`}},
		{"a bad duration string in a file",
			layers{etcDir: "[client]\nwait_timeout = \"soon\"\n"},
			[]string{`config: client.wait_timeout = "soon" (from `, `FILE:etc/50-a.toml): not a duration`}},
		{"negative seconds in a file",
			layers{etcDir: "[shutdown]\ntimeout = -5\n"},
			[]string{`config: shutdown.timeout = "-5" (from `, `FILE:etc/50-a.toml): must be at least 0s`}},
		{"a list of numbers in a file",
			layers{etcDir: "[discovery]\netcd_endpoints = [1, 2]\n"},
			[]string{`config: discovery.etcd_endpoints = "[1, 2]" (from `, `: not a list of strings`}},
		{"a bad enum in LOOM_CONFIG names that file",
			layers{configFile: "[log]\nformat = \"xml\"\n"},
			[]string{`config: log.format = "xml" (from `, `FILE:loom.toml): not one of text, json`}},
		{"a value where a table belongs",
			layers{etcDir: "nats = \"nats://x:4222\"\n"},
			[]string{`config: nats = "nats://x:4222" (from `, `: nats is a table; set its keys under [nats]`}},
		{"an unknown key in a file suggests the closest",
			layers{defaultsDir: "[nats]\nurll = \"nats://x:4222\"\n"},
			[]string{`config: nats.urll = "nats://x:4222" (from `, `FILE:defaults/50-a.toml): unknown key; did you mean nats.url?`}},
		{"an unknown table suggests the closest",
			layers{etcDir: "[natz]\nurl = \"nats://x:4222\"\n"},
			[]string{`config: natz = "{url = ...}" (from `, `unknown key; did you mean nats?`}},
		{"a key in the wrong table suggests the right one",
			layers{etcDir: "[nats]\nbackend = \"etcd\"\n"},
			[]string{`config: nats.backend = "etcd" (from `, `unknown key; did you mean discovery.backend?`}},
		{"an unknown key far from any",
			layers{etcDir: "[observability]\nendpoint = \"x\"\n"},
			[]string{`config: observability = "{endpoint = ...}"`, "unknown key; `loom config --markdown` lists the keys"}},
		{"malformed TOML names the file and line",
			layers{etcDir: "[nats]\nurl = nats://x:4222\n"},
			[]string{`config: malformed TOML in `, `FILE:etc/50-a.toml: toml: line 2`}},
		{"a duplicate key is malformed TOML",
			layers{etcDir: "[log]\nlevel = \"info\"\nlevel = \"warn\"\n"},
			[]string{`FILE:etc/50-a.toml: toml: line 3`}},
		{"every bad value is reported, not just the first",
			layers{etcDir: "[log]\nlevel = \"loud\"\n", env: map[string]string{"LOOM_LOG_LEVEL": "quiet"}},
			[]string{`"loud" (from `, `"quiet" (from env LOOM_LOG_LEVEL)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, root, err := tt.layers.load(t)
			if err == nil {
				t.Fatalf("Load = %+v, want an error", l.Config)
			}
			if l != nil {
				t.Errorf("Load returned a config with its error")
			}
			for _, want := range tt.want {
				if rel, ok := strings.CutPrefix(want, "FILE:"); ok {
					want = filepath.Join(root, rel)
				}
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error\n\t%v\ndoes not contain\n\t%s", err, want)
				}
			}
		})
	}
}

func TestLoadErrorTypes(t *testing.T) {
	t.Run("a bad value is an *Error", func(t *testing.T) {
		_, err := Load(WithDirs(), mapEnv(map[string]string{"LOOM_LOG_LEVEL": "loud"}))
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("err = %#v, want an *Error", err)
		}
		if e.Key != "log.level" || e.Value != "loud" || e.Source != "env LOOM_LOG_LEVEL" {
			t.Errorf("Error = %+v", e)
		}
	})
	t.Run("an unknown key is ErrUnknownKey", func(t *testing.T) {
		_, err := Load(WithDirs(), mapEnv(nil), WithValue("nope", "1"))
		if !errors.Is(err, ErrUnknownKey) {
			t.Errorf("err = %v, want ErrUnknownKey", err)
		}
	})
	t.Run("a missing LOOM_CONFIG file is fs.ErrNotExist and says what to do", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "absent.toml")
		_, err := Load(WithDirs(), mapEnv(map[string]string{ConfigEnv: path}))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %v, want fs.ErrNotExist", err)
		}
		for _, want := range []string{"LOOM_CONFIG names " + path, "unset LOOM_CONFIG"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
		}
	})
	t.Run("an unreadable directory is an error", func(t *testing.T) {
		file := writeFile(t, t.TempDir(), "not-a-dir", "")
		_, err := Load(WithDirs(file), mapEnv(nil))
		if err == nil || !strings.Contains(err.Error(), "reading directory "+file) {
			t.Errorf("err = %v, want one naming %s", err, file)
		}
	})
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *Config)
		want   []string
	}{
		{"the defaults are valid", func(*Config) {}, nil},
		{"a bad enum", func(c *Config) { c.RequestPlane.Codec = "gob" },
			[]string{`config: request_plane.codec = "gob": not one of msgpack, json`}},
		{"a negative timeout", func(c *Config) { c.Discovery.DialTimeout = -time.Second },
			[]string{`config: discovery.dial_timeout = "-1s": must be at least 0s`}},
		{"a port out of range", func(c *Config) { c.RequestPlane.Port = 1 << 16 },
			[]string{`config: request_plane.port = "65536": must be at most 65535`}},
		{"the zero Config is not valid", func(c *Config) { *c = Config{} },
			[]string{`discovery.backend = "": not one of`, `discovery.lease_ttl = "0s": must be at least 1s`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.change(&c)
			err := c.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate = nil, want an error")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error\n\t%v\ndoes not contain\n\t%s", err, want)
				}
			}
		})
	}
}

func TestDefaultDoesNotShareSlices(t *testing.T) {
	a := Default()
	a.Discovery.EtcdEndpoints[0] = "changed"
	if b := Default(); b.Discovery.EtcdEndpoints[0] == "changed" {
		t.Error("changing one Default's list changed the next")
	}
}
