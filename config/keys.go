package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// EnvPrefix starts the environment variable every key can be set with:
// EnvPrefix + the key upper-cased with dots as underscores.
const EnvPrefix = "LOOM_"

// Key describes one configuration key, as read from the tags of [Config].
type Key struct {
	// Name is the dotted key, such as "nats.url".
	Name string
	// Type is one of "string", "[]string", "int", "bool", "duration" and
	// "float".
	Type string
	// Env lists the environment variables that set the key, strongest
	// first: the LOOM_ name, then the aliases of the `env` tag in order.
	Env []string
	// Default is the built-in value, as written in the `default` tag.
	Default string
	// Doc is the one-line description.
	Doc string
	// Enum lists the allowed values; empty allows any.
	Enum []string
	// Min and Max bound ordered types, in the type's syntax; empty for none.
	Min, Max string
	// NonZero, if set, refuses the value 0 of an ordered type, though it
	// is within Min and Max: it says why and what to write instead, such
	// as "0 would hold no connection; write -1 for no limit or a positive
	// count". It is set where what uses the key would read 0 as something
	// else than the description says, such as a built-in default.
	NonZero string
	// Secret keys are masked when printed.
	Secret bool
}

// field is a Key plus what the loader needs to read and write it.
type field struct {
	Key
	index    []int
	kind     *kind
	def      any // parsed Default
	min, max any // parsed Min and Max, or nil
}

// kind holds the conversions of one leaf type. Values travel as string,
// []string, int, bool, time.Duration or float64.
type kind struct {
	name     string
	parse    func(s string) (any, error) // env, defaults, WithValue
	fromTOML func(v any) (any, error)    // values decoded from a file
	format   func(v any) string
	get      func(f reflect.Value) any
	compare  func(a, b any) int // nil if the type has no order
}

var errNotString = errors.New("not a string; quote it")

var (
	kindString = &kind{
		name:  "string",
		parse: func(s string) (any, error) { return s, nil },
		fromTOML: func(v any) (any, error) {
			if s, ok := v.(string); ok {
				return s, nil
			}
			return nil, errNotString
		},
		format: func(v any) string { return v.(string) },
		get:    func(f reflect.Value) any { return f.String() },
	}
	kindStrings = &kind{
		name:  "[]string",
		parse: func(s string) (any, error) { return splitList(s), nil },
		fromTOML: func(v any) (any, error) {
			switch v := v.(type) {
			case string:
				return splitList(v), nil
			case []any:
				out := make([]string, 0, len(v))
				for _, e := range v {
					s, ok := e.(string)
					if !ok {
						return nil, errors.New("not a list of strings; use [\"a\", \"b\"] or \"a,b\"")
					}
					out = append(out, s)
				}
				return out, nil
			}
			return nil, errors.New("not a list of strings; use [\"a\", \"b\"] or \"a,b\"")
		},
		format: func(v any) string { return strings.Join(v.([]string), ",") },
		get: func(f reflect.Value) any {
			out := make([]string, f.Len())
			for i := range out {
				out[i] = f.Index(i).String()
			}
			return out
		},
	}
	kindInt = &kind{
		name:  "int",
		parse: parseInt,
		fromTOML: func(v any) (any, error) {
			switch v := v.(type) {
			case int64:
				if v < math.MinInt || v > math.MaxInt {
					return nil, errors.New("out of range for an int")
				}
				return int(v), nil
			case string:
				return parseInt(v)
			}
			return nil, errors.New("not an integer; use decimal digits like 8080 or -1")
		},
		format:  func(v any) string { return strconv.Itoa(v.(int)) },
		get:     func(f reflect.Value) any { return int(f.Int()) },
		compare: func(a, b any) int { return cmpOrdered(a.(int), b.(int)) },
	}
	kindBool = &kind{
		name:  "bool",
		parse: parseBool,
		fromTOML: func(v any) (any, error) {
			switch v := v.(type) {
			case bool:
				return v, nil
			case string:
				return parseBool(v)
			}
			return nil, errors.New("not a boolean; use true or false")
		},
		format: func(v any) string { return strconv.FormatBool(v.(bool)) },
		get:    func(f reflect.Value) any { return f.Bool() },
	}
	kindDuration = &kind{
		name:  "duration",
		parse: parseDuration,
		fromTOML: func(v any) (any, error) {
			switch v := v.(type) {
			case string:
				return parseDuration(v)
			case int64:
				if v > math.MaxInt64/int64(time.Second) || v < math.MinInt64/int64(time.Second) {
					return nil, errors.New("too many seconds for a duration")
				}
				return time.Duration(v) * time.Second, nil
			}
			return nil, errors.New("not a duration; use a string in Go syntax like \"30s\" or an integer number of seconds")
		},
		format:  func(v any) string { return v.(time.Duration).String() },
		get:     func(f reflect.Value) any { return time.Duration(f.Int()) },
		compare: func(a, b any) int { return cmpOrdered(a.(time.Duration), b.(time.Duration)) },
	}
	kindFloat = &kind{
		name:  "float",
		parse: parseFloat,
		fromTOML: func(v any) (any, error) {
			switch v := v.(type) {
			case float64:
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return nil, errors.New("not a finite number")
				}
				return v, nil
			case int64:
				return float64(v), nil
			case string:
				return parseFloat(v)
			}
			return nil, errors.New("not a number; use decimal syntax like 0.5")
		},
		format:  func(v any) string { return strconv.FormatFloat(v.(float64), 'g', -1, 64) },
		get:     func(f reflect.Value) any { return f.Float() },
		compare: func(a, b any) int { return cmpOrdered(a.(float64), b.(float64)) },
	}
)

func parseInt(s string) (any, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, strconv.IntSize)
	if err != nil {
		return nil, errors.New("not an integer; use decimal digits like 8080 or -1")
	}
	return int(n), nil
}

func parseBool(s string) (any, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return nil, errors.New("not a boolean; use true or false")
	}
	return b, nil
}

func parseDuration(s string) (any, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return nil, errors.New("not a duration; use Go syntax like 30s or 1m30s")
	}
	return d, nil
}

func parseFloat(s string) (any, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, errors.New("not a number; use decimal syntax like 0.5")
	}
	return f, nil
}

func cmpOrdered[T int | time.Duration | float64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// splitList splits a comma-separated list, trimming spaces and dropping
// empty elements, so "" is the empty list.
func splitList(s string) []string {
	out := []string{}
	for e := range strings.SplitSeq(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

var durationType = reflect.TypeFor[time.Duration]()

func kindOf(t reflect.Type) *kind {
	if t == durationType {
		return kindDuration
	}
	switch t.Kind() {
	case reflect.String:
		return kindString
	case reflect.Int:
		return kindInt
	case reflect.Bool:
		return kindBool
	case reflect.Float64:
		return kindFloat
	case reflect.Slice:
		if t.Elem().Kind() == reflect.String {
			return kindStrings
		}
	}
	return nil
}

// schema is the key table, built once from the tags of Config.
type schema struct {
	fields   []*field
	byName   map[string]*field
	prefixes map[string]bool // the tables: every proper prefix of a key
}

var loadSchema = sync.OnceValues(func() (*schema, error) {
	return buildSchema(reflect.TypeFor[Config]())
})

func buildSchema(t reflect.Type) (*schema, error) {
	s := &schema{byName: map[string]*field{}, prefixes: map[string]bool{}}
	envs := map[string]string{}
	var errs []error
	var walk func(t reflect.Type, prefix string, index []int)
	walk = func(t reflect.Type, prefix string, index []int) {
		for i := range t.NumField() {
			sf := t.Field(i)
			name, ok := sf.Tag.Lookup("key")
			if !ok || !sf.IsExported() {
				continue
			}
			if prefix != "" {
				name = prefix + "." + name
			}
			idx := append(slices.Clone(index), i)
			if sf.Type.Kind() == reflect.Struct && sf.Type != durationType {
				s.prefixes[name] = true
				walk(sf.Type, name, idx)
				continue
			}
			f, err := newField(name, sf, idx)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if s.byName[name] != nil {
				errs = append(errs, fmt.Errorf("config: key %s defined twice", name))
				continue
			}
			for _, e := range f.Env {
				if other, dup := envs[e]; dup {
					errs = append(errs, fmt.Errorf("config: env %s names both %s and %s", e, other, name))
				}
				envs[e] = name
			}
			s.fields = append(s.fields, f)
			s.byName[name] = f
		}
	}
	walk(t, "", nil)
	for p := range s.prefixes {
		if s.byName[p] != nil {
			errs = append(errs, fmt.Errorf("config: key %s is both a table and a value", p))
		}
	}
	return s, errors.Join(errs...)
}

func newField(name string, sf reflect.StructField, index []int) (*field, error) {
	k := kindOf(sf.Type)
	if k == nil {
		return nil, fmt.Errorf("config: key %s has unsupported type %s", name, sf.Type)
	}
	f := &field{
		Key: Key{
			Name:    name,
			Type:    k.name,
			Env:     []string{EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, ".", "_"))},
			Default: sf.Tag.Get("default"),
			Doc:     sf.Tag.Get("doc"),
			Min:     sf.Tag.Get("min"),
			Max:     sf.Tag.Get("max"),
			NonZero: sf.Tag.Get("nonzero"),
			Secret:  sf.Tag.Get("secret") == "true",
		},
		index: index,
		kind:  k,
	}
	if env := sf.Tag.Get("env"); env != "" {
		f.Env = append(f.Env, splitList(env)...)
	}
	if enum := sf.Tag.Get("enum"); enum != "" {
		f.Enum = splitList(enum)
	}
	if f.Doc == "" {
		return nil, fmt.Errorf("config: key %s has no doc tag", name)
	}
	if f.NonZero != "" && k.compare == nil {
		return nil, fmt.Errorf("config: key %s: nonzero on unordered type %s", name, k.name)
	}
	var err error
	for _, b := range []struct {
		tag string
		dst *any
	}{{f.Min, &f.min}, {f.Max, &f.max}} {
		if b.tag == "" {
			continue
		}
		if k.compare == nil {
			return nil, fmt.Errorf("config: key %s: min/max on unordered type %s", name, k.name)
		}
		if *b.dst, err = k.parse(b.tag); err != nil {
			return nil, fmt.Errorf("config: key %s: bound %q: %w", name, b.tag, err)
		}
	}
	// An empty default is the zero value, which need not pass the checks:
	// nats.user unset is "", not a bad user. A key that refuses 0 needs
	// another default.
	if f.Default == "" {
		if f.NonZero != "" {
			return nil, fmt.Errorf("config: key %s: nonzero without a default, so its default would be the 0 it refuses", name)
		}
		f.def = k.get(reflect.Zero(sf.Type))
		return f, nil
	}
	if f.def, err = k.parse(f.Default); err != nil {
		return nil, fmt.Errorf("config: key %s: default %q: %w", name, f.Default, err)
	}
	if err := f.check(f.def); err != nil {
		return nil, fmt.Errorf("config: key %s: default %q: %w", name, f.Default, err)
	}
	return f, nil
}

// check applies the key's enum and bounds to a parsed value.
func (f *field) check(v any) error {
	if len(f.Enum) > 0 {
		vals := []string{}
		switch v := v.(type) {
		case string:
			vals = append(vals, v)
		case []string:
			vals = v
		}
		for _, s := range vals {
			if !slices.Contains(f.Enum, s) {
				return fmt.Errorf("not one of %s", strings.Join(f.Enum, ", "))
			}
		}
	}
	if f.min != nil && f.kind.compare(v, f.min) < 0 {
		return fmt.Errorf("must be at least %s", f.Min)
	}
	if f.max != nil && f.kind.compare(v, f.max) > 0 {
		return fmt.Errorf("must be at most %s", f.Max)
	}
	if f.NonZero != "" && reflect.ValueOf(v).IsZero() {
		return errors.New(f.NonZero)
	}
	return nil
}

func (f *field) value(c *Config) reflect.Value {
	return reflect.ValueOf(c).Elem().FieldByIndex(f.index)
}

func (f *field) set(c *Config, v any) {
	if l, ok := v.([]string); ok {
		v = slices.Clone(l) // the default's slice must not be shared
	}
	dst := f.value(c)
	dst.Set(reflect.ValueOf(v).Convert(dst.Type()))
}

func (f *field) get(c *Config) any { return f.kind.get(f.value(c)) }

// Keys returns the table of every configuration key, in the order of the
// fields of [Config].
func Keys() []Key {
	s, _ := loadSchema()
	out := make([]Key, len(s.fields))
	for i, f := range s.fields {
		out[i] = f.Key
		out[i].Env = slices.Clone(f.Env)
		out[i].Enum = slices.Clone(f.Enum)
	}
	return out
}

// Default returns the configuration made of the built-in defaults alone.
func Default() Config {
	var c Config
	s, _ := loadSchema()
	for _, f := range s.fields {
		f.set(&c, f.def)
	}
	return c
}

// Validate checks every value of c against the allowed values and bounds of
// its key, as Load does, for configurations built or changed in code. The
// error joins one [*Error] per bad value.
func (c *Config) Validate() error {
	s, err := loadSchema()
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range s.fields {
		v := f.get(c)
		if err := f.check(v); err != nil {
			errs = append(errs, &Error{Key: f.Name, Value: f.kind.format(v), Err: err})
		}
	}
	errs = append(errs, crossCheck(c, nil)...)
	return errors.Join(errs...)
}
