package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
)

// printJSON writes v as indented JSON: what a command's --json prints when
// its answer is one value (a list, a record, a summary).
func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printJSONLine writes v as one line of JSON: what a command's --json
// prints for each of a stream of results (published events, added jobs,
// watched instances), so that a reader can act on each as it comes.
func printJSONLine(out io.Writer, v any) error {
	return json.NewEncoder(out).Encode(v)
}

// isTerminal reports whether w is a terminal, where a progress line may
// redraw itself with \r; in a pipe or a file it would leave every frame.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// dialable returns addr (host:port) with a host of every address (0.0.0.0
// or ::), which is where a server listens but no address to dial, turned
// into this machine's loopback address, and whether it did: a URL a
// person or client on this machine can open.
func dialable(addr string) (string, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, false
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", port), true
	}
	return addr, false
}

// everyAddressNote is said of a server dialable names on its loopback
// address because it listens on every address.
const everyAddressNote = "listening on every address: from another machine, use this one's name or address"

// noteIf is everyAddressNote as a clause to add to a parenthesis, if
// every.
func noteIf(every bool) string {
	if every {
		return "; " + everyAddressNote
	}
	return ""
}

// pageNote is url, the page served on addr, with everyAddressNote if addr
// is every address.
func pageNote(url, addr string) string {
	if _, every := dialable(addr); every {
		return url + " (" + everyAddressNote + ")"
	}
	return url
}

// count says n of noun in words: "1 mock worker", "4 mock workers".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
