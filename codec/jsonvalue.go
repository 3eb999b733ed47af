package codec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// ParseJSON decodes one JSON value, as a person types it for a tool such as
// `loom call` or `loom queue add`, into a value to encode with another
// codec. Whole numbers become int64 (uint64 above its range), so that they
// decode into a handler's integer fields; other numbers become float64.
func ParseJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("codec: not JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("codec: more than one JSON value")
	}
	return wholeNumbers(v), nil
}

func wholeNumbers(v any) any {
	switch v := v.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		// Above int64: a uint64 field's value, such as an id.
		if u, err := strconv.ParseUint(string(v), 10, 64); err == nil {
			return u
		}
		f, _ := v.Float64()
		return f
	case map[string]any:
		for k, e := range v {
			v[k] = wholeNumbers(e)
		}
	case []any:
		for i, e := range v {
			v[i] = wholeNumbers(e)
		}
	}
	return v
}

// JSONValue turns a value decoded into `any` by MessagePack into one that
// encoding/json prints: map keys become strings, and byte strings that are
// UTF-8 text become strings (others stay bytes, printed as base64).
func JSONValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = JSONValue(e)
		}
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[fmt.Sprint(k)] = JSONValue(e)
		}
		return m
	case []any:
		for i, e := range v {
			v[i] = JSONValue(e)
		}
	case []byte:
		if utf8.Valid(v) {
			return string(v)
		}
	}
	return v
}
