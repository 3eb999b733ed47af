package config

import (
	"strings"
	"text/tabwriter"
)

// Mask replaces the value of a secret key that is set, when printed.
const Mask = "****"

// PEMText stands for a value that is PEM text (the etcd backend's TLS
// keys take a file or its text), which would not fit on a line, when printed.
const PEMText = "(PEM text)"

// shown returns v, or PEMText if v is PEM text.
func shown(v string) string {
	if strings.HasPrefix(strings.TrimSpace(v), "-----BEGIN") {
		return PEMText
	}
	return v
}

// Setting is one line of `loom config`: a key, its effective value as text
// and the value's source.
type Setting struct {
	Key    string `json:"key"`
	Value  string `json:"value"` // Mask for a secret that is set, PEMText for PEM text
	Source string `json:"source"`
}

// Settings returns the effective value and source of every key, in the
// order of [Keys], with secrets masked and PEM text shown as PEMText. Lists are written comma-separated
// and durations in Go syntax.
func (l *Loaded) Settings() []Setting {
	s, _ := loadSchema()
	out := make([]Setting, len(s.fields))
	for i, f := range s.fields {
		v := f.kind.format(f.get(&l.Config))
		switch {
		case f.Secret && v != "":
			v = Mask
		case f.kind == kindString:
			v = shown(v)
		}
		out[i] = Setting{Key: f.Name, Value: v, Source: l.sources[f.Name]}
	}
	return out
}

// Table returns [Loaded.Settings] as aligned text with a KEY VALUE SOURCE
// header, as `loom config` prints it.
func (l *Loaded) Table() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	w.Write([]byte("KEY\tVALUE\tSOURCE\n"))
	for _, s := range l.Settings() {
		w.Write([]byte(s.Key + "\t" + s.Value + "\t" + s.Source + "\n"))
	}
	w.Flush() // a strings.Builder does not fail
	return b.String()
}

// Markdown returns the documentation table of every key as Markdown, with
// columns key, env, default and description; the README's configuration
// table is this text.
func Markdown() string {
	var b strings.Builder
	b.WriteString("| Key | Env | Default | Description |\n")
	b.WriteString("| --- | --- | --- | --- |\n")
	for _, k := range Keys() {
		env := make([]string, len(k.Env))
		for i, e := range k.Env {
			env[i] = code(e)
		}
		def := ""
		if k.Default != "" {
			def = code(k.Default)
		}
		doc := k.Doc
		if len(k.Enum) > 0 {
			vals := make([]string, len(k.Enum))
			for i, e := range k.Enum {
				vals[i] = code(e)
			}
			doc += " One of " + strings.Join(vals, ", ") + "."
		}
		if k.Secret {
			doc += " Secret: `loom config` masks it."
		}
		b.WriteString("| " + code(k.Name) + " | " + strings.Join(env, ", ") + " | " + def + " | " + cell(doc) + " |\n")
	}
	return b.String()
}

func code(s string) string { return "`" + cell(s) + "`" }

// cell escapes what would end a Markdown table cell.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
