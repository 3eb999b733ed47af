package main

import (
	"encoding/json"
	"io"
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
