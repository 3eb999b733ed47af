package config

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// The directories Load reads *.toml files from, lowest precedence first,
// unless [WithDirs] says otherwise.
const (
	DefaultsDir = "/opt/loom/defaults"
	EtcDir      = "/opt/loom/etc"
)

// ConfigEnv names the environment variable holding the path of one more
// TOML file, read after the directories.
const ConfigEnv = "LOOM_CONFIG"

// The sources of values that are not a file path or an environment variable.
const (
	SourceDefault = "default"
	SourceCode    = "code"
)

// ErrUnknownKey is wrapped by the [*Error] for a key that is not in the key
// table.
var ErrUnknownKey = errors.New("unknown key")

// Error is a bad configuration value: the key, the value, where it came from
// and what is wrong with it.
type Error struct {
	Key    string // dotted key, such as "nats.url"
	Value  string // the bad value as written
	Source string // "default", a file path, "env NAME", "code"; "" from [Config.Validate]
	Err    error  // what is wrong and what is expected
}

// Error returns a message such as
//
//	config: shutdown.timeout = "5 parsecs" (from env LOOM_SHUTDOWN_TIMEOUT): not a duration; use Go syntax like 30s or 1m30s
func (e *Error) Error() string {
	if e.Source == "" {
		return fmt.Sprintf("config: %s = %q: %v", e.Key, e.Value, e.Err)
	}
	return fmt.Sprintf("config: %s = %q (from %s): %v", e.Key, e.Value, e.Source, e.Err)
}

// Unwrap returns the reason the value is bad.
func (e *Error) Unwrap() error { return e.Err }

// Option changes how [Load] finds values.
type Option func(*loader)

// WithDirs replaces the directories read for *.toml files, lowest
// precedence first; by default [DefaultsDir] then [EtcDir]. With no
// arguments no directory is read. A directory that does not exist is
// skipped.
func WithDirs(dirs ...string) Option {
	return func(l *loader) { l.dirs = slices.Clone(dirs) }
}

// WithEnv replaces the lookup of environment variables, os.LookupEnv by
// default; tests pass a map's lookup. The process's LOOM_* variables are
// then not checked for typos (see Loaded.Warnings).
func WithEnv(lookup func(name string) (string, bool)) Option {
	return func(l *loader) { l.lookup, l.environ = lookup, nil }
}

// WithValue sets key to value, written as in an environment variable,
// above every other layer; its source is "code". A later WithValue for the
// same key wins.
func WithValue(key, value string) Option {
	return func(l *loader) { l.values = append(l.values, [2]string{key, value}) }
}

// Loaded is a loaded configuration with the source of each value.
type Loaded struct {
	// Config holds the effective values.
	Config Config
	// Files lists the TOML files read, in the order applied.
	Files []string
	// Warnings lists what was set but means nothing: environment variables
	// named LOOM_* that are no configuration key's (a typo is then not
	// silent), other than those of Loom's own tests (LOOM_KUBECTL...). A
	// runtime logs them when it starts.
	Warnings []string

	sources map[string]string
}

// Source returns where the effective value of key came from: "default", a
// file path, "env NAME" or "code"; "" for an unknown key.
func (l *Loaded) Source(key string) string { return l.sources[key] }

type loader struct {
	dirs    []string
	lookup  func(string) (string, bool)
	environ func() []string
	values  [][2]string

	schema *schema
	out    *Loaded
	errs   []error
}

// Load builds the configuration from its layers, lowest first: defaults,
// the *.toml files of each directory in name order, the file named by
// LOOM_CONFIG, environment variables, then [WithValue] options. It checks
// every value it applies, not just the winning one, and returns all the bad
// ones at once, joined; each is an [*Error] unless the fault is a whole
// file's (unreadable, malformed TOML, or LOOM_CONFIG naming a missing file).
func Load(opts ...Option) (*Loaded, error) {
	s, err := loadSchema()
	if err != nil {
		return nil, err
	}
	l := &loader{
		dirs:    []string{DefaultsDir, EtcDir},
		lookup:  os.LookupEnv,
		environ: os.Environ,
		schema:  s,
		out:     &Loaded{sources: map[string]string{}},
	}
	for _, o := range opts {
		o(l)
	}
	for _, f := range s.fields {
		l.apply(f, f.def, SourceDefault)
	}
	for _, dir := range l.dirs {
		l.loadDir(dir)
	}
	if path, ok := l.env(ConfigEnv); ok {
		l.loadFile(path, ConfigEnv)
	}
	for _, f := range s.fields {
		l.loadEnv(f)
	}
	if l.environ != nil {
		l.out.Warnings = s.unknownEnv(l.environ())
	}
	for _, kv := range l.values {
		f := s.byName[kv[0]]
		if f == nil {
			l.fail(&Error{Key: kv[0], Value: kv[1], Source: SourceCode, Err: s.unknown(kv[0])})
			continue
		}
		parseApply(l, f, kv[1], SourceCode, f.kind.parse)
	}
	l.errs = append(l.errs, crossCheck(&l.out.Config, l.out.sources)...)
	if len(l.errs) > 0 {
		return nil, errors.Join(l.errs...)
	}
	return l.out, nil
}

// minHeartbeatTimeout is the shortest silence a NATS request plane call
// can be judged by: its servers heartbeat at a third of the timeout the
// caller asks for, but at most every 10ms (natsplane.MinHeartbeatInterval),
// so a shorter timeout fails or retries calls whose servers are working.
const minHeartbeatTimeout = 30 * time.Millisecond

// minStreamAge is the shortest MaxAge a JetStream stream (or object
// store TTL) may have: nats-server refuses to create one below it.
const minStreamAge = 100 * time.Millisecond

// floors lists the duration keys whose 0 or negative values mean what
// their descriptions say, but whose positive values must not be below a
// floor, which min cannot say.
var floors = []struct {
	key   string
	get   func(c *Config) time.Duration
	floor time.Duration
	why   string // after "below <floor>: "
}{
	{"request_plane.stall_timeout", func(c *Config) time.Duration { return c.RequestPlane.StallTimeout }, minHeartbeatTimeout,
		"NATS servers heartbeat at most every 10ms, so calls to servers that are working would be deemed frozen; write at least 30ms, or a negative duration such as -1s for off"},
	{"queue.max_age", func(c *Config) time.Duration { return c.Queue.MaxAge }, minStreamAge,
		"the NATS server creates no stream that keeps messages for less; write at least 100ms, or 0 to keep jobs until they are handled"},
	{"queue.dead_letter_max_age", func(c *Config) time.Duration { return c.Queue.DeadLetterMaxAge }, minStreamAge,
		"the NATS server creates no stream that keeps messages for less; write at least 100ms, or 0 to keep dead letters forever"},
	{"queue.eventbus_max_age", func(c *Config) time.Duration { return c.Queue.EventBusMaxAge }, minStreamAge,
		"the NATS server creates no stream that keeps messages for less; write at least 100ms, or 0 to keep events until other limits apply"},
	{"events.jetstream.max_age", func(c *Config) time.Duration { return c.Events.JetStream.MaxAge }, minStreamAge,
		"the NATS server creates no stream that keeps messages for less; write at least 100ms, or 0 to keep events until another limit applies"},
}

// crossCheck checks the rules that the tags of one key cannot say: those
// that tie two keys together, and the floors. sources, when given, names
// where the offending value came from.
func crossCheck(c *Config, sources map[string]string) []error {
	var errs []error
	for _, f := range floors {
		if v := f.get(c); v > 0 && v < f.floor {
			errs = append(errs, &Error{Key: f.key, Value: v.String(), Source: sources[f.key], Err: fmt.Errorf("below %s: %s", f.floor, f.why)})
		}
	}
	if q := c.Queue; q.BackoffInitial > q.BackoffMax {
		errs = append(errs, &Error{Key: "queue.backoff_initial", Value: q.BackoffInitial.String(), Source: sources["queue.backoff_initial"],
			Err: fmt.Errorf("above queue.backoff_max (%s): the first retry delay cannot exceed the longest; lower it or raise queue.backoff_max", q.BackoffMax)})
	}
	if c.Discovery.Backend == "etcd" {
		errs = append(errs, etcdChecks(&c.Discovery, sources)...)
	}
	return errs
}

// etcdChecks checks the etcd backend's authentication and TLS keys
// together, where etcd's client would otherwise ignore a setting without
// a word. Other backends do not read them, so they are not checked then.
func etcdChecks(d *Discovery, sources map[string]string) []error {
	var errs []error
	bad := func(key, value string, err error) {
		errs = append(errs, &Error{Key: key, Value: value, Source: sources[key], Err: err})
	}
	// Neither is used without the other.
	switch {
	case d.EtcdPassword != "" && d.EtcdUsername == "":
		bad("discovery.etcd_password", Mask, errors.New("set without discovery.etcd_username (ETCD_AUTH_USERNAME); a password needs its user"))
	case d.EtcdUsername != "" && d.EtcdPassword == "":
		bad("discovery.etcd_username", d.EtcdUsername, errors.New("set without discovery.etcd_password (ETCD_AUTH_PASSWORD); etcd's client sends no credentials for a user alone (a user without a password is authenticated by a client certificate's common name: set discovery.etcd_tls_cert_file instead)"))
	}
	switch {
	case d.EtcdTLSCertFile != "" && d.EtcdTLSKeyFile == "":
		bad("discovery.etcd_tls_cert_file", shown(d.EtcdTLSCertFile), errors.New("set without discovery.etcd_tls_key_file (ETCD_AUTH_CLIENT_KEY); a certificate needs its key"))
	case d.EtcdTLSKeyFile != "" && d.EtcdTLSCertFile == "":
		bad("discovery.etcd_tls_key_file", Mask, errors.New("set without discovery.etcd_tls_cert_file (ETCD_AUTH_CLIENT_CERT); a key needs its certificate"))
	}
	// etcd's client takes the scheme of the first endpoint for all of
	// them: http:// drops TLS, whatever else is configured.
	var plain, secure []string
	for _, ep := range d.EtcdEndpoints {
		switch {
		case hasScheme(ep, "http://"):
			plain = append(plain, ep)
		case hasScheme(ep, "https://"):
			secure = append(secure, ep)
		}
	}
	var tlsKeys []string
	if d.EtcdTLSCAFile != "" {
		tlsKeys = append(tlsKeys, "discovery.etcd_tls_ca_file")
	}
	if d.EtcdTLSCertFile != "" {
		tlsKeys = append(tlsKeys, "discovery.etcd_tls_cert_file")
	}
	switch {
	case len(plain) > 0 && len(tlsKeys) > 0:
		bad("discovery.etcd_endpoints", strings.Join(d.EtcdEndpoints, ","), fmt.Errorf(
			"%s set, but etcd's client uses no TLS with http:// endpoints (%s); write them https://", strings.Join(tlsKeys, " and "), strings.Join(plain, ",")))
	case len(plain) > 0 && len(secure) > 0:
		bad("discovery.etcd_endpoints", strings.Join(d.EtcdEndpoints, ","), errors.New(
			"mixes http:// and https://, but etcd's client uses the first endpoint's scheme for every one; write them all https:// (or all http://)"))
	}
	return errs
}

func hasScheme(endpoint, scheme string) bool {
	return len(endpoint) >= len(scheme) && strings.EqualFold(endpoint[:len(scheme)], scheme)
}

// toolEnv lists the LOOM_* variables that are not configuration but are
// read by Loom's tests and benchmarks: the README has developers export
// the first two, so every process they then start must not warn of them.
var toolEnv = []string{
	"LOOM_KUBE_APISERVER",       // the kube-apiserver of the -tags kube tests
	"LOOM_KUBECTL",              // the kubectl of the -tags kube tests
	"LOOM_DASHBOARD_SCREENSHOT", // where the -tags browser test saves the page
	"LOOM_BENCH_AUTO_ID",        // a switch of the queue benchmarks
}

// unknownEnv returns a warning for each LOOM_* variable in environ that
// no key reads, suggesting the closest variable that one does.
func (s *schema) unknownEnv(environ []string) []string {
	known := map[string]bool{ConfigEnv: true}
	for _, name := range toolEnv {
		known[name] = true
	}
	for _, f := range s.fields {
		for _, name := range f.Env {
			known[name] = true
		}
	}
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "LOOM_") || known[name] {
			continue
		}
		best, bestDist := "", max(1, len(name)/4)+1
		for k := range known {
			if d := levenshtein(name, k); d < bestDist || d == bestDist && k < best {
				best, bestDist = k, d
			}
		}
		w := fmt.Sprintf("environment variable %s is not a configuration variable and is ignored", name)
		if best != "" {
			w += fmt.Sprintf("; did you mean %s?", best)
		} else {
			w += "; `loom config` lists the keys, each with its variables"
		}
		out = append(out, w)
	}
	slices.Sort(out)
	return out
}

// env reads an environment variable; empty counts as unset, so a variable
// a compose file passes through blank does not clear a default.
func (l *loader) env(name string) (string, bool) {
	v, ok := l.lookup(name)
	return v, ok && v != ""
}

func (l *loader) fail(err error) { l.errs = append(l.errs, err) }

func (l *loader) apply(f *field, v any, source string) {
	f.set(&l.out.Config, v)
	l.out.sources[f.Name] = source
}

// parseApply converts raw with conv, checks it and applies it.
func parseApply[T any](l *loader, f *field, raw T, source string, conv func(T) (any, error)) {
	v, err := conv(raw)
	if err == nil {
		err = f.check(v)
	}
	if err != nil {
		l.fail(&Error{Key: f.Name, Value: render(raw), Source: source, Err: err})
		return
	}
	l.apply(f, v, source)
}

// loadEnv applies the strongest of f's environment variables that is set.
func (l *loader) loadEnv(f *field) {
	for _, name := range f.Env {
		if v, ok := l.env(name); ok {
			parseApply(l, f, v, "env "+name, f.kind.parse)
			return
		}
	}
}

func (l *loader) loadDir(dir string) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		l.fail(fmt.Errorf("config: reading directory %s: %w", dir, err))
		return
	}
	// ReadDir sorts by name.
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".toml") {
			continue
		}
		l.loadFile(filepath.Join(dir, e.Name()), "")
	}
}

// loadFile applies one TOML file. via names the variable that pointed at it,
// if any, for the error when it is missing.
func (l *loader) loadFile(path, via string) {
	data, err := os.ReadFile(path)
	if err != nil {
		if via != "" {
			l.fail(fmt.Errorf("config: %s names %s, which cannot be read (fix or unset %s): %w", via, path, via, err))
		} else {
			l.fail(fmt.Errorf("config: reading %s: %w", path, err))
		}
		return
	}
	var m map[string]any
	if _, err := toml.Decode(string(data), &m); err != nil {
		l.fail(fmt.Errorf("config: malformed TOML in %s: %w", path, err))
		return
	}
	l.out.Files = append(l.out.Files, path)
	l.loadTable(m, "", path)
}

// loadTable applies the keys of one TOML table, whose dotted name is prefix.
func (l *loader) loadTable(m map[string]any, prefix, path string) {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names) // report errors in a stable order
	for _, k := range names {
		v, name := m[k], k
		if prefix != "" {
			name = prefix + "." + k
		}
		if f := l.schema.byName[name]; f != nil {
			parseApply(l, f, v, path, f.kind.fromTOML)
			continue
		}
		if l.schema.prefixes[name] {
			if sub, ok := v.(map[string]any); ok {
				l.loadTable(sub, name, path)
				continue
			}
			l.fail(&Error{Key: name, Value: render(v), Source: path,
				Err: fmt.Errorf("%s is a table; set its keys under [%s]", name, name)})
			continue
		}
		l.fail(&Error{Key: name, Value: render(v), Source: path, Err: l.schema.unknown(name)})
	}
}

// unknown returns ErrUnknownKey, suggesting the closest known name: a key
// of the same name in another table, else a near-typo of a key or table.
func (s *schema) unknown(name string) error {
	if s.prefixes[name] {
		for _, f := range s.fields {
			if strings.HasPrefix(f.Name, name+".") {
				return fmt.Errorf("%w; %s is a table, set one of its keys such as %s", ErrUnknownKey, name, f.Name)
			}
		}
	}
	best := ""
	leaf := name[strings.LastIndexByte(name, '.')+1:]
	for _, f := range s.fields {
		if f.Name[strings.LastIndexByte(f.Name, '.')+1:] == leaf {
			best = f.Name
			break
		}
	}
	if best == "" {
		candidates := make([]string, 0, len(s.fields)+len(s.prefixes))
		for _, f := range s.fields {
			candidates = append(candidates, f.Name)
		}
		candidates = append(candidates, slices.Sorted(maps.Keys(s.prefixes))...)
		bestDist := max(1, len(name)/4) + 1 // typos, not different words
		for _, c := range candidates {
			if d := levenshtein(name, c); d < bestDist {
				best, bestDist = c, d
			}
		}
	}
	if best == "" {
		return fmt.Errorf("%w; `loom config --markdown` lists the keys", ErrUnknownKey)
	}
	return fmt.Errorf("%w; did you mean %s?", ErrUnknownKey, best)
}

// render writes a value decoded from TOML for an error message.
func render(v any) string {
	switch v := v.(type) {
	case map[string]any:
		keys := slices.Sorted(maps.Keys(v))
		for i, k := range keys {
			keys[i] = k + " = ..."
		}
		return "{" + strings.Join(keys, ", ") + "}"
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = render(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case []map[string]any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = render(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return fmt.Sprint(v)
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
