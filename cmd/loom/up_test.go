package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestLoomUpDefaultsAreTheDocumented holds README.md's account of `loom up`
// (NATS clients on 4222, monitoring on 8222, etcd on 2379, data under
// ./loom-data, on 127.0.0.1) to the command's flag defaults, both in the
// prose and in the output it shows.
func TestLoomUpDefaultsAreTheDocumented(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	prose := regexp.MustCompile(`client\s+port (\d+), monitoring on (\d+), data under\s+` + "`./([^`]+)`" + `\) and etcd for discovery \(port (\d+)\)`).FindStringSubmatch(readme)
	if prose == nil {
		t.Fatal("README.md no longer describes loom up's ports as this test reads them; update the test")
	}
	flags := newUp().Flags()
	def := func(name string) string {
		t.Helper()
		f := flags.Lookup(name)
		if f == nil {
			t.Fatalf("loom up has no --%s", name)
		}
		return f.DefValue
	}
	for _, c := range []struct{ flag, doc string }{
		{"nats-port", prose[1]},
		{"monitor-port", prose[2]},
		{"data-dir", prose[3]},
		{"etcd-port", prose[4]},
	} {
		if got := def(c.flag); got != c.doc {
			t.Errorf("--%s defaults to %s; README.md says %s", c.flag, got, c.doc)
		}
	}
	// The example output README.md shows for a plain `loom up`.
	host := def("host")
	for _, line := range []string{
		"NATS_SERVER=nats://" + host + ":" + def("nats-port") + "\n",
		"LOOM_DISCOVERY=" + def("discovery") + "\n",
		"ETCD_ENDPOINTS=http://" + host + ":" + def("etcd-port") + "\n",
		"loom up: serving (data in " + def("data-dir") + ", monitoring on http://" + host + ":" + def("monitor-port") + ");",
	} {
		if !strings.Contains(readme, line) {
			t.Errorf("README.md's example of loom up's output lacks %q, which the defaults give", strings.TrimSpace(line))
		}
	}
}
