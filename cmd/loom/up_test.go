package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/loomrt/loom/config"
	"github.com/loomrt/loom/internal/testutil"
	"github.com/loomrt/loom/internal/zmtp"
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

// waitExit waits for the process to end by itself and returns its exit
// code, failing the test if it is still running after 30s.
func (p *loomProc) waitExit() int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		out, errs := p.lines()
		p.t.Fatalf("%v still running after 30s\nstdout: %q\nstderr: %q", p.cmd.Args, out, errs)
	}
	return p.cmd.ProcessState.ExitCode()
}

// TestASecondLoomUpOnTheSameDataDirFailsNamingIt starts two loom up on one
// --data-dir (other ports): the second must fail at once, naming the
// directory, instead of sharing the first one's JetStream store or waiting
// forever for etcd's database lock.
func TestASecondLoomUpOnTheSameDataDirFailsNamingIt(t *testing.T) {
	dir := t.TempDir()
	args := []string{"up", "--nats-port", "0", "--monitor-port", "0", "--etcd-port", "0", "--etcd-peer-port", "0", "--data-dir", dir}
	first := startLoom(t, nil, args...)
	first.waitStderr(`^loom up: serving`)

	second := startLoom(t, nil, args...)
	if code := second.waitExit(); code != 1 {
		out, errs := second.lines()
		t.Fatalf("the second loom up exited %d, want 1\nstdout: %q\nstderr: %q", code, out, errs)
	}
	out, errs := second.lines()
	if len(out) != 0 {
		t.Errorf("the second loom up printed an environment: %q", out)
	}
	msg := strings.Join(errs, "\n")
	for _, want := range []string{"--data-dir " + dir, "another loom up"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the second loom up's error does not say %q:\n%s", want, msg)
		}
	}

	// The first is unharmed, and once it has stopped the directory is free.
	_ = first.cmd.Process.Signal(syscall.SIGTERM)
	first.exit()
	third := startLoom(t, nil, args...)
	third.waitStderr(`^loom up: serving`)
	_ = third.cmd.Process.Signal(syscall.SIGTERM)
	third.exit()
}

// TestLoomUpRefusesAPortOutOfRangeNamingTheFlag runs loom up with each port
// flag out of range: a usage error naming the flag, before any server
// starts (a negative port made nats-server pick a random one, and loom up
// then printed the monitoring URL with the negative port in it).
func TestLoomUpRefusesAPortOutOfRangeNamingTheFlag(t *testing.T) {
	for _, flag := range []string{"--nats-port", "--monitor-port", "--etcd-port", "--etcd-peer-port"} {
		for _, port := range []string{"-1", "65536"} {
			t.Run(flag+" "+port, func(t *testing.T) {
				p := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--etcd-port", "0", "--etcd-peer-port", "0",
					"--data-dir", t.TempDir(), flag, port)
				code := p.waitExit()
				out, errs := p.lines()
				if code != 2 {
					t.Errorf("exit code %d, want 2\nstdout: %q\nstderr: %q", code, out, errs)
				}
				if want := flag + " " + port + ": want a port in 0..65535"; !strings.Contains(strings.Join(errs, "\n"), want) {
					t.Errorf("stderr %q does not say %q", errs, want)
				}
			})
		}
	}
}

// TestLoomUpNamesTheMonitoringAddressItListensOn holds the serving line to
// the nats-server's monitoring address, not to the flag's text.
func TestLoomUpNamesTheMonitoringAddressItListensOn(t *testing.T) {
	port := strconv.Itoa(testutil.FreePort(t))
	p := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", port, "--discovery", "natskv", "--data-dir", t.TempDir())
	url := p.waitStderr(`^loom up: serving \(data in .*, monitoring on (http://[^)]+)\);`)[1]
	if url != "http://127.0.0.1:"+port {
		t.Errorf("loom up says monitoring is on %s, want http://127.0.0.1:%s", url, port)
	}
	resp, err := http.Get(url + "/varz")
	if err != nil {
		t.Fatalf("the monitoring URL loom up printed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s/varz: %s", url, resp.Status)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.exit()
}

// TestLoomUpRefusesABadBrokerOrDiscoveryBeforeStarting gives loom up a
// --zmq-broker, --zmq-broker-max-peers or --discovery it cannot use: a
// usage error naming the flag, before any server starts (the broker's
// ports were read only once nats-server and etcd were up).
func TestLoomUpRefusesABadBrokerOrDiscoveryBeforeStarting(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--zmq-broker=5557"}, `--zmq-broker "5557": want two ports`},
		{[]string{"--zmq-broker=5557,70000"}, `--zmq-broker "5557,70000": want two ports`},
		{[]string{"--discovery=consul"}, `--discovery "consul": use etcd or natskv`},
		{[]string{"--zmq-broker", "--zmq-broker-max-peers", "0"}, `--zmq-broker-max-peers 0: want 1 or more connections on each side, or -1 for no limit`},
		{[]string{"--zmq-broker", "--zmq-broker-max-peers", "-2"}, `--zmq-broker-max-peers -2: want 1 or more connections on each side, or -1 for no limit`},
		{[]string{"--zmq-broker", "--zmq-broker-max-peers", "many"}, `invalid argument "many" for "--zmq-broker-max-peers" flag`},
		{[]string{"--zmq-broker-max-peers", "10"}, `--zmq-broker-max-peers 10: it limits the broker of --zmq-broker, which is not asked for; add --zmq-broker`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			p := startLoom(t, nil, append([]string{"up", "--nats-port", "0", "--monitor-port", "0", "--etcd-port", "0", "--etcd-peer-port", "0",
				"--data-dir", t.TempDir(), "-v"}, tc.args...)...)
			code := p.waitExit()
			out, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			if code != 2 || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "usage: loom up") {
				t.Errorf("exit code %d, stderr:\n%s\nwant 2, %q and the usage line", code, stderr, tc.want)
			}
			// -v logs the servers' lines: none may have started.
			if len(out) != 0 || len(errs) != 3 {
				t.Errorf("servers started before the flag was refused:\nstdout: %q\nstderr: %q", out, errs)
			}
		})
	}
}

// TestLoomUpLimitsTheBrokersPeers starts `loom up --zmq-broker
// --zmq-broker-max-peers 1` (the broker held 4096 peers a side, whatever
// one wanted): on each side, a second connection while a peer is held is
// closed at once, without a greeting, and the refusal is logged; once the
// peer leaves, another takes its place.
func TestLoomUpLimitsTheBrokersPeers(t *testing.T) {
	up := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--discovery", "natskv",
		"--data-dir", t.TempDir(), "--zmq-broker=0,0", "--zmq-broker-max-peers", "1")
	up.waitStderr(`^loom up: serving`)
	up.waitStdout(`^LOOM_STATUS_PORT=`)
	out, _ := up.lines()
	env := map[string]string{}
	for _, l := range out {
		k, v, _ := strings.Cut(l, "=")
		env[k] = v
	}
	connect := func(t *testing.T, typ zmtp.SocketType, ep string) *zmtp.Socket {
		t.Helper()
		s := zmtp.NewSocket(zmtp.Options{Type: typ})
		t.Cleanup(func() { s.Close() })
		link, err := s.Dial(ep)
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(20 * time.Second); !link.Connected(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("a peer did not connect to the broker at %s within 20s", ep)
			}
		}
		return s
	}
	for _, side := range []struct {
		name, key string
		typ       zmtp.SocketType
	}{
		{"publishers", "LOOM_EVENTS_ZMQ_BROKER_PUB", zmtp.PUB},
		{"subscribers", "LOOM_EVENTS_ZMQ_BROKER_SUB", zmtp.SUB},
	} {
		t.Run(side.name, func(t *testing.T) {
			ep := env[side.key]
			if !strings.HasPrefix(ep, "tcp://") {
				t.Fatalf("loom up printed %s=%q; want a tcp:// endpoint", side.key, ep)
			}
			first := connect(t, side.typ, ep)
			c, err := net.Dial("tcp", strings.TrimPrefix(ep, "tcp://"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
			// An accepted connection gets the broker's greeting at once;
			// a refused one is closed without a byte.
			var b [64]byte
			if n, err := c.Read(b[:]); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("a second connection to the broker's %s side, beyond --zmq-broker-max-peers 1, read %d bytes (%v); want it closed at once", side.name, n, err)
			}
			first.Close()
			connect(t, side.typ, ep) // the place the first left
		})
	}
	// The refusal names the flag that set the limit, not the publishers'
	// events.zmq.max_peers.
	up.waitStderr(`level=WARN msg="zmtp: peer refused: the socket holds its maximum of peers \(--zmq-broker-max-peers\)" .* max=1$`)
	_ = up.cmd.Process.Signal(syscall.SIGTERM)
	up.exit()
}

// TestTheBrokersPeerLimitIsThePublishersByDefault holds the default of
// --zmq-broker-max-peers to events.zmq.max_peers', as README.md says.
func TestTheBrokersPeerLimitIsThePublishersByDefault(t *testing.T) {
	flag := newUp().Flags().Lookup("zmq-broker-max-peers")
	if flag == nil {
		t.Fatal("loom up has no --zmq-broker-max-peers")
	}
	if want := strconv.Itoa(config.Default().Events.ZMQ.MaxPeers); flag.DefValue != want {
		t.Errorf("--zmq-broker-max-peers defaults to %s; events.zmq.max_peers to %s", flag.DefValue, want)
	}
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if want := "--zmq-broker-max-peers 10000   # connections it holds a side (default " + flag.DefValue + ", as events.zmq.max_peers"; !strings.Contains(string(b), want) {
		t.Errorf("README.md does not say %q", want)
	}
}

// TestLoomUpOnAnAddressNotOfThisMachineSaysSo starts loom up on a host it
// cannot listen on: the error must point at --host, not suggest that
// another loom up holds the ports.
func TestLoomUpOnAnAddressNotOfThisMachineSaysSo(t *testing.T) {
	for _, monitor := range []string{"0", "8222"} {
		t.Run("monitoring port "+monitor, func(t *testing.T) {
			// 192.0.2.1 is TEST-NET-1, no machine's address.
			p := startLoom(t, nil, "up", "--host", "192.0.2.1", "--nats-port", "0", "--monitor-port", monitor, "--discovery", "natskv", "--data-dir", t.TempDir())
			code := p.waitExit()
			_, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			if code != 1 || !strings.Contains(stderr, "--host 192.0.2.1 is not an address of this machine") || strings.Contains(stderr, "another loom up") || strings.Contains(stderr, "another process") {
				t.Errorf("exit code %d, stderr:\n%s\nwant 1 and a hint at --host alone", code, stderr)
			}
		})
	}
}

// TestLoomUpOnADataDirItCannotWriteNamesIt gives loom up a --data-dir
// under a file: the error names the directory and what to do.
func TestLoomUpOnADataDirItCannotWriteNamesIt(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "loom-data")
	p := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--etcd-port", "0", "--etcd-peer-port", "0", "--data-dir", dir)
	code := p.waitExit()
	_, errs := p.lines()
	stderr := strings.Join(errs, "\n")
	if code != 1 || !strings.Contains(stderr, "--data-dir "+dir+":") || !strings.Contains(stderr, "not a directory") || !strings.Contains(stderr, "give loom up a directory it can write") {
		t.Errorf("exit code %d, stderr:\n%s\nwant 1, the directory, the reason and what to do", code, stderr)
	}
}

// TestLoomUpOnATakenPortNamesIt holds README.md's "a second loom up on the
// same ports fails with an error naming the port" for each port flag.
func TestLoomUpOnATakenPortNamesIt(t *testing.T) {
	for _, flag := range []string{"--nats-port", "--monitor-port", "--etcd-port", "--etcd-peer-port"} {
		t.Run(flag, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
			p := startLoom(t, nil, "up", "--nats-port", "0", "--monitor-port", "0", "--etcd-port", "0", "--etcd-peer-port", "0",
				"--data-dir", t.TempDir(), flag, port)
			code := p.waitExit()
			_, errs := p.lines()
			stderr := strings.Join(errs, "\n")
			if code != 1 || !strings.Contains(stderr, "127.0.0.1:"+port) || !strings.Contains(stderr, "address already in use") || !strings.Contains(stderr, "another loom up") {
				t.Errorf("exit code %d, stderr:\n%s\nwant 1, the port, and the hint that another loom up may hold it", code, stderr)
			}
			// The flag that set the port, and no other flag nor the Go
			// fields of the embedded servers' options.
			if !strings.Contains(stderr, flag+" "+port) || !strings.Contains(stderr, "choose another "+flag+";") {
				t.Errorf("stderr:\n%s\nwant it to name %s %s and to say to choose another %s", stderr, flag, port, flag)
			}
			for _, other := range []string{"--nats-port", "--monitor-port", "--etcd-port", "--etcd-peer-port", "Port to 0", "Options."} {
				if other != flag && strings.Contains(strings.ReplaceAll(stderr, flag, ""), other) {
					t.Errorf("stderr:\n%s\nnames %q, which has nothing to do with %s", stderr, other, flag)
				}
			}
		})
	}
}

// TestLoomUpOnEveryAddressNamesTheAdvertisedHost runs loom up listening on
// every address (--host 0.0.0.0). It printed NATS_SERVER=nats://0.0.0.0:...
// and the like: a listen address, which a component on another machine
// cannot dial. Without --advertise it must refuse, naming the flag; with
// it, every line must name the advertised host, and work.
func TestLoomUpOnEveryAddressNamesTheAdvertisedHost(t *testing.T) {
	for _, host := range []string{"0.0.0.0", "::"} {
		p := startLoom(t, nil, "up", "--host", host, "--nats-port", "0", "--monitor-port", "0", "--etcd-port", "0", "--etcd-peer-port", "0",
			"--data-dir", t.TempDir())
		code := p.waitExit()
		out, errs := p.lines()
		stderr := strings.Join(errs, "\n")
		if code != 2 || len(out) != 0 || !strings.Contains(stderr, "--host "+host+" listens on every address, and --advertise is unset") || !strings.Contains(stderr, "set --advertise to") {
			t.Errorf("loom up --host %s: exit code %d\nstdout: %q\nstderr:\n%s\nwant 2, no environment, and a usage error naming --advertise", host, code, out, stderr)
		}
	}
	for _, bad := range []string{"10.0.0.5:4222", "nats://10.0.0.5", "0.0.0.0"} {
		p := startLoom(t, nil, "up", "--host", "0.0.0.0", "--advertise", bad, "--nats-port", "0", "--monitor-port", "0", "--discovery", "natskv",
			"--data-dir", t.TempDir())
		code := p.waitExit()
		_, errs := p.lines()
		if stderr := strings.Join(errs, "\n"); code != 2 || !strings.Contains(stderr, "--advertise") || !strings.Contains(stderr, bad) {
			t.Errorf("loom up --advertise %s: exit code %d, stderr:\n%s\nwant 2 and an error naming --advertise %s", bad, code, stderr, bad)
		}
	}

	monitor := strconv.Itoa(testutil.FreePort(t))
	up := startLoom(t, nil, "up", "--host", "0.0.0.0", "--advertise", "127.0.0.1", "--nats-port", "0", "--monitor-port", monitor,
		"--etcd-port", "0", "--etcd-peer-port", "0", "--data-dir", t.TempDir(), "--zmq-broker=0,0")
	url := up.waitStderr(`^loom up: serving \(data in .*, monitoring on (http://[^)]+)\);`)[1]
	// Standard output is read apart from standard error: its lines may
	// come a moment later. LOOM_STATUS_PORT is the last.
	up.waitStdout(`^LOOM_STATUS_PORT=`)
	out, _ := up.lines()
	want := map[string]*regexp.Regexp{
		"NATS_SERVER":                regexp.MustCompile(`^nats://127\.0\.0\.1:\d+$`),
		"LOOM_DISCOVERY":             regexp.MustCompile(`^etcd$`),
		"ETCD_ENDPOINTS":             regexp.MustCompile(`^http://127\.0\.0\.1:\d+$`),
		"LOOM_EVENTS_TRANSPORT":      regexp.MustCompile(`^zmq$`),
		"LOOM_EVENTS_ZMQ_BROKER_PUB": regexp.MustCompile(`^tcp://127\.0\.0\.1:\d+$`),
		"LOOM_EVENTS_ZMQ_BROKER_SUB": regexp.MustCompile(`^tcp://127\.0\.0\.1:\d+$`),
		"LOOM_STATUS_PORT":           regexp.MustCompile(`^-1$`),
	}
	if len(out) != len(want) {
		t.Errorf("loom up printed %d lines, want %d: %q", len(out), len(want), out)
	}
	for _, line := range out {
		k, v, _ := strings.Cut(line, "=")
		if rx := want[k]; rx == nil || !rx.MatchString(v) {
			t.Errorf("loom up --advertise 127.0.0.1 printed %q, want %v", line, rx)
		}
	}
	if url != "http://127.0.0.1:"+monitor {
		t.Errorf("loom up says monitoring is on %s, want http://127.0.0.1:%s", url, monitor)
	}
	// The lines reach the servers: loom ls reads etcd discovery over NATS
	// and etcd, the monitoring URL answers.
	runLoom(t, append([]string{"LOOM_LOG_LEVEL=warn"}, out...), "ls")
	// etcd tells its clients (those that sync their endpoints from the
	// member list) the advertised address too, not 0.0.0.0.
	var endpoint string
	for _, line := range out {
		if v, ok := strings.CutPrefix(line, "ETCD_ENDPOINTS="); ok {
			endpoint = v
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	members, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatalf("etcd member list at %s: %v", endpoint, err)
	}
	if len(members.Members) != 1 || !slices.Equal(members.Members[0].ClientURLs, []string{endpoint}) {
		t.Errorf("etcd advertises the client URLs %v; want [%s], what loom up printed", members.Members, endpoint)
	}
	resp, err := http.Get(url + "/varz")
	if err != nil {
		t.Fatalf("the monitoring URL loom up printed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s/varz: %s", url, resp.Status)
	}
	_ = up.cmd.Process.Signal(syscall.SIGTERM)
	up.exit()
}
