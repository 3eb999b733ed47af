package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestKeyTable(t *testing.T) {
	if _, err := loadSchema(); err != nil {
		t.Fatalf("the tags of Config are wrong: %v", err)
	}
	keys := Keys()
	seen := map[string]bool{}
	for _, k := range keys {
		want := "LOOM_" + strings.ToUpper(strings.ReplaceAll(k.Name, ".", "_"))
		if k.Env[0] != want {
			t.Errorf("%s: first env %s, want %s", k.Name, k.Env[0], want)
		}
		if seen[k.Name] {
			t.Errorf("%s listed twice", k.Name)
		}
		seen[k.Name] = true
	}
	for _, name := range []string{"nats.url", "discovery.etcd_endpoints", "shutdown.timeout", "log.format"} {
		if !seen[name] {
			t.Errorf("key %s missing", name)
		}
	}
	want := Key{
		Name: "discovery.etcd_endpoints", Type: "[]string",
		Env:     []string{"LOOM_DISCOVERY_ETCD_ENDPOINTS", "ETCD_ENDPOINTS"},
		Default: "http://127.0.0.1:2379", Doc: "etcd client URLs, comma-separated.",
	}
	for _, k := range keys {
		if k.Name == want.Name && !reflect.DeepEqual(k, want) {
			t.Errorf("got %+v, want %+v", k, want)
		}
	}
	keys[0].Env[0] = "CHANGED"
	if Keys()[0].Env[0] == "CHANGED" {
		t.Error("Keys shares its slices with the table")
	}
}

func TestBuildSchemaRejectsBadTags(t *testing.T) {
	type every struct {
		S string        `key:"s" default:"x" doc:"d"`
		L []string      `key:"l" default:"a,b" doc:"d"`
		I int           `key:"i" default:"3" min:"0" max:"9" doc:"d"`
		B bool          `key:"b" default:"true" doc:"d"`
		D time.Duration `key:"d" default:"1s" min:"0s" doc:"d"`
		F float64       `key:"f" default:"0.5" min:"0" max:"1" doc:"d"`
		E string        `key:"e" default:"a" enum:"a,b" doc:"d"`
		Z int           `key:"z" doc:"zero default"`
		Y int           `key:"y" default:"-1" min:"-1" nonzero:"0 is read as unset" doc:"d"`
		N struct {
			X string `key:"x" env:"X_ONE, X_TWO" doc:"d"`
		} `key:"n"`
		//lint:ignore U1000 a field without a key tag, which the table must skip
		untagged int
	}
	tests := []struct {
		name string
		typ  reflect.Type
		want string
	}{
		{"every supported type builds", reflect.TypeFor[every](), ""},
		{"an unsupported type", reflect.TypeFor[struct {
			M map[string]string `key:"m" doc:"d"`
		}](), "key m has unsupported type map[string]string"},
		{"a missing doc", reflect.TypeFor[struct {
			S string `key:"s"`
		}](), "key s has no doc tag"},
		{"a default of the wrong type", reflect.TypeFor[struct {
			D time.Duration `key:"d" default:"soon" doc:"d"`
		}](), `key d: default "soon": not a duration`},
		{"a default outside the enum", reflect.TypeFor[struct {
			S string `key:"s" default:"c" enum:"a,b" doc:"d"`
		}](), `key s: default "c": not one of a, b`},
		{"a default under the min", reflect.TypeFor[struct {
			I int `key:"i" default:"-5" min:"0" doc:"d"`
		}](), `key i: default "-5": must be at least 0`},
		{"a min on a string", reflect.TypeFor[struct {
			S string `key:"s" min:"a" doc:"d"`
		}](), "min/max on unordered type string"},
		{"nonzero on a string", reflect.TypeFor[struct {
			S string `key:"s" default:"x" nonzero:"no" doc:"d"`
		}](), "key s: nonzero on unordered type string"},
		{"nonzero with the zero default", reflect.TypeFor[struct {
			D time.Duration `key:"d" nonzero:"no" doc:"d"`
		}](), "key d: nonzero without a default"},
		{"a bad bound", reflect.TypeFor[struct {
			I int `key:"i" max:"lots" doc:"d"`
		}](), `key i: bound "lots": not an integer`},
		{"one env var for two keys", reflect.TypeFor[struct {
			A string `key:"a" env:"SAME" doc:"d"`
			B string `key:"b" env:"SAME" doc:"d"`
		}](), "env SAME names both a and b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := buildSchema(tt.typ)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := len(s.fields); got != 10 {
					t.Errorf("%d keys, want 10", got)
				}
				if y := s.byName["y"]; y.check(0) == nil || y.check(0).Error() != "0 is read as unset" || y.check(-1) != nil || y.check(2) != nil {
					t.Errorf("y with nonzero: check(0) = %v, check(-1) = %v, check(2) = %v", y.check(0), y.check(-1), y.check(2))
				}
				if x := s.byName["n.x"]; x == nil || !reflect.DeepEqual(x.Env, []string{"LOOM_N_X", "X_ONE", "X_TWO"}) {
					t.Errorf("n.x = %+v", x)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestUnknownSuggests(t *testing.T) {
	s, _ := loadSchema()
	tests := []struct{ name, want string }{
		{"nats.urll", "did you mean nats.url?"},
		{"log.levle", "did you mean log.level?"},
		{"shutdown.grace", "`loom config --markdown` lists the keys"},
		{"discovery.etcd_endpoint", "did you mean discovery.etcd_endpoints?"},
		{"requestplane", "did you mean request_plane?"},
		{"log.backend", "did you mean discovery.backend?"},
		{"zzz", "`loom config --markdown` lists the keys"},
		{"nats", "nats is a table, set one of its keys such as nats.url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.unknown(tt.name)
			if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("unknown(%q) = %v, want %q", tt.name, err, tt.want)
			}
		})
	}
}
