package mocker

import (
	"strconv"
	"testing"
)

// TestEngineIDIsAWholeHexID: a prefill job's engine_id names the decode
// worker to tell; one that only begins with hex digits (a UUID from
// another producer, trailing bytes) is refused rather than taken to name
// the worker its first digits happen to spell.
func TestEngineIDIsAWholeHexID(t *testing.T) {
	for _, s := range []string{"1f", "ffffffffffffffff", "0A"} {
		if id, err := parseEngineID(s); err != nil || strconv.FormatUint(id, 16) != trimZeros(s) {
			t.Errorf("engine_id %q: %x, %v", s, id, err)
		}
	}
	for _, s := range []string{"", "0", "1g", "1f 2", " 1f", "0x1f", "+1f", "3fa85f64-5717-4562-b3fc-2c963f66afa6", "10000000000000000"} {
		if id, err := parseEngineID(s); err == nil {
			t.Errorf("engine_id %q read as %x, want it refused", s, id)
		}
	}
}

func trimZeros(s string) string {
	for len(s) > 1 && s[0] == '0' {
		s = s[1:]
	}
	return toLower(s)
}

func toLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'F' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// FuzzParseEngineID: engine_id comes off the prefill queue, from any
// producer. It is read as a worker's id only if it is that id in hex,
// exactly as a decode worker writes it.
func FuzzParseEngineID(f *testing.F) {
	for _, s := range []string{"1f", "1g", "0", "", "ffffffffffffffff", "0x1", "3fa85f64-5717"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := parseEngineID(s)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("%q: an empty error", s)
			}
			return
		}
		if id == 0 || !equalFoldHex(strconv.FormatUint(id, 16), s) {
			t.Fatalf("%q read as %x", s, id)
		}
	})
}

// equalFoldHex reports whether s is id's hex digits, in either case, with
// any leading zeros.
func equalFoldHex(id, s string) bool { return trimZeros(s) == id }
