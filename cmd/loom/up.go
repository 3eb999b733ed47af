package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/embedded/etcdserver"
	"github.com/loomrt/loom/internal/datadir"
	"github.com/loomrt/loom/internal/zmtp"
)

type upOptions struct {
	host        string
	advertise   string // the host components dial, if not host
	dataDir     string
	natsPort    int
	monitorPort int
	etcdPort    int
	etcdPeer    int
	discovery   string
	verbose     bool
	zmqBroker   string // "pubport,subport", or "" for none (upbroker.go)
	brokerPeers int    // the broker's peer limit on each side; -1: none
	json        bool   // print the environment as a JSON object
}

func newUp() *cobra.Command {
	o := upOptions{host: "127.0.0.1", dataDir: "loom-data", natsPort: 4222, monitorPort: 8222, etcdPort: 2379, etcdPeer: 2380, discovery: "etcd", brokerPeers: zmtp.DefaultMaxPeers}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a local control plane: nats-server with JetStream, and etcd or NATS KV discovery",
		Long: `Run a local control plane in this process, for several Loom processes on one
machine: a nats-server with JetStream (file store under --data-dir) and an
etcd server for discovery, or, with --discovery natskv, NATS alone (discovery
in a JetStream KV bucket).

It prints the environment lines the components need, one per line; set them
in each component's environment (for example: export them in its shell).
With --json it prints them as one JSON object instead. Ctrl-C stops the
servers cleanly; their data stays in --data-dir, which one loom up at a
time may use.

The lines name the servers at --host, or at --advertise if set: with a
--host of every address (0.0.0.0 or ::), which no component can dial,
--advertise is required, the host name or address other machines reach
this one at.`,
		Example: `  loom up
  loom up --discovery natskv --zmq-broker 5567,5568
  loom up --zmq-broker --zmq-broker-max-peers 10000
  loom up --json
  loom up --host 0.0.0.0 --advertise 10.0.0.5`,
		Args: func(cmd *cobra.Command, args []string) error {
			// --zmq-broker's ports are optional, so pflag leaves them as an
			// argument when they follow a space: take them back.
			if len(args) == 1 && cmd.Flags().Changed("zmq-broker") && o.zmqBroker == defaultZMQBrokerPorts && brokerPorts.MatchString(args[0]) {
				o.zmqBroker = args[0]
				return nil
			}
			return cobra.NoArgs(cmd, args)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, p := range []struct {
				flag string
				port int
			}{{"--nats-port", o.natsPort}, {"--monitor-port", o.monitorPort}, {"--etcd-port", o.etcdPort}, {"--etcd-peer-port", o.etcdPeer}} {
				if p.port < 0 || p.port > 65535 {
					return &usageError{cmd, fmt.Errorf("%s %d: want a port in 0..65535", p.flag, p.port)}
				}
			}
			if o.zmqBroker != "" {
				if _, _, err := parseBrokerPorts(o.zmqBroker); err != nil {
					return &usageError{cmd, err}
				}
			}
			if err := checkBrokerPeers(o.brokerPeers, o.zmqBroker != "", cmd.Flags().Changed("zmq-broker-max-peers")); err != nil {
				return &usageError{cmd, err}
			}
			if o.discovery != "etcd" && o.discovery != "natskv" {
				return &usageError{cmd, fmt.Errorf("--discovery %q: use etcd or natskv", o.discovery)}
			}
			if err := checkAdvertise(o.host, o.advertise); err != nil {
				return &usageError{cmd, err}
			}
			ctx, stop := signalContext(context.Background(), cmd.ErrOrStderr())
			defer stop()
			return up(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.host, "host", o.host, "address the servers listen on")
	f.StringVar(&o.advertise, "advertise", "", "host components dial to reach the servers, if not --host (required when --host is 0.0.0.0 or ::)")
	f.StringVar(&o.dataDir, "data-dir", o.dataDir, "where JetStream and etcd keep their data")
	f.IntVar(&o.natsPort, "nats-port", o.natsPort, "NATS client port; 0 picks a free one")
	f.IntVar(&o.monitorPort, "monitor-port", o.monitorPort, "NATS monitoring (HTTP) port; 0 turns it off")
	f.IntVar(&o.etcdPort, "etcd-port", o.etcdPort, "etcd client port; 0 picks a free one")
	f.IntVar(&o.etcdPeer, "etcd-peer-port", o.etcdPeer, "etcd peer port; 0 picks a free one")
	f.StringVar(&o.discovery, "discovery", o.discovery, "etcd, or natskv for NATS alone")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "log the servers' own lines")
	f.StringVar(&o.zmqBroker, "zmq-broker", "", "also run a ZeroMQ event broker on these ports (publishers,subscribers); alone, 5557,5558")
	f.Lookup("zmq-broker").NoOptDefVal = defaultZMQBrokerPorts
	f.IntVar(&o.brokerPeers, "zmq-broker-max-peers", o.brokerPeers, "connections the ZeroMQ broker holds at once on each side (publishers, subscribers); one more is refused, logged and closed; -1: no limit")
	f.BoolVar(&o.json, "json", false, "print the environment as one JSON object")
	return cmd
}

// up starts the servers, prints the environment, and serves until ctx ends.
func up(ctx context.Context, out, errOut io.Writer, o upOptions) error {
	if o.discovery != "etcd" && o.discovery != "natskv" {
		return fmt.Errorf("--discovery %q: use etcd or natskv", o.discovery)
	}
	unlock, err := lockDataDir(o.dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	// The servers log only when asked: their shutdown chatter is noise.
	// The broker's warnings, peers refused beyond --zmq-broker-max-peers,
	// are logged always: nothing else shows that the limit bites.
	var log *slog.Logger
	brokerLog := slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if o.verbose {
		log = slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelInfo}))
		brokerLog = log
	}
	// A server may wait without end while starting (etcd for its
	// database's lock, held by a stray process, where there is no flock
	// to find that out at once): a signal must still end loom up, so the
	// start runs apart and is abandoned on one. The process exits next,
	// which ends what it had started.
	type started struct {
		s   *upServers
		err error
	}
	done := make(chan started, 1)
	go func() {
		s, err := startServers(o, log, brokerLog)
		done <- started{s, err}
	}()
	var srv *upServers
	select {
	case r := <-done:
		if r.err != nil {
			return r.err
		}
		srv = r.s
	case <-ctx.Done():
		fmt.Fprintln(errOut, "loom up: interrupted while starting the servers")
		if ec, ok := interrupted(); ok {
			return ec
		}
		return ctx.Err()
	}
	defer srv.stop()
	ns, env := srv.nats, srv.env
	if o.advertise != "" {
		for i := range env {
			env[i][1] = advertised(env[i][1], o.advertise)
		}
	}
	// Each component runs a status server on a free port and names it in
	// its instance records, so that loom dashboard can read its load.
	env = append(env, [2]string{"LOOM_STATUS_PORT", "-1"})
	if o.json {
		obj := make(map[string]string, len(env))
		for _, kv := range env {
			obj[kv[0]] = kv[1]
		}
		if err := printJSONLine(out, obj); err != nil {
			return err
		}
	} else {
		for _, kv := range env {
			fmt.Fprintf(out, "%s=%s\n", kv[0], kv[1])
		}
	}
	monitorNote := ""
	if u := ns.MonitorURL(); u != "" {
		monitorNote = ", monitoring on " + advertised(u, o.advertise)
	}
	what := "the lines above"
	if o.json {
		what = "the variables of the JSON object above"
	}
	fmt.Fprintf(errOut, "loom up: serving (data in %s%s); set %s in each component's environment; Ctrl-C to stop\n", o.dataDir, monitorNote, what)
	<-ctx.Done()
	fmt.Fprintln(errOut, "loom up: stopping")
	return nil
}

// checkAdvertise refuses a --host that components could not dial without
// an --advertise to dial instead, and an --advertise that is not a host.
func checkAdvertise(host, advertise string) error {
	if advertise == "" {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			example := "10.0.0.5"
			if name, err := os.Hostname(); err == nil && name != "" {
				example = name
			}
			return fmt.Errorf("--host %s listens on every address, and --advertise is unset: components would be told to dial %s, which is no machine's address; set --advertise to the host name or address they reach this machine at (such as %s)", host, host, example)
		}
		return nil
	}
	if ip := net.ParseIP(advertise); ip != nil {
		if ip.IsUnspecified() {
			return fmt.Errorf("--advertise %s: want the host name or address components dial, not every address", advertise)
		}
		return nil
	}
	if strings.ContainsAny(advertise, ":/@ \t[]") {
		return fmt.Errorf("--advertise %q: want a host name or address alone, without a scheme or port (the ports are loom up's own), such as 10.0.0.5", advertise)
	}
	return nil
}

// advertised returns the URL u with its host replaced by host, if host is
// set: the address components dial, where u names the one a server
// listens on.
func advertised(u, host string) string {
	if host == "" {
		return u
	}
	p, err := url.Parse(u)
	if err != nil || p.Host == "" {
		return u
	}
	p.Host = net.JoinHostPort(host, p.Port())
	return p.String()
}

// upServers are the servers loom up runs and the environment that reaches
// them.
type upServers struct {
	nats  *embedded.NATS
	env   [][2]string
	stops []func() // in the order to call them
}

func (s *upServers) stop() {
	for _, f := range s.stops {
		f()
	}
}

// startServers starts nats-server, then etcd and the ZeroMQ broker if
// asked for; on an error it stops what it had started.
func startServers(o upOptions, log, brokerLog *slog.Logger) (_ *upServers, err error) {
	s := &upServers{}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	ns, err := embedded.StartNATS(embedded.NATSOptions{
		Host: o.host, Port: o.natsPort, JetStream: true, StoreDir: filepath.Join(o.dataDir, "nats"),
		MonitorPort: o.monitorPort, Logger: log,
	})
	if err != nil {
		var le *embedded.ListenError
		if errors.As(err, &le) {
			return nil, portError(le.Addr, le.Err, map[string]string{"client": "--nats-port", "monitoring": "--monitor-port"}[le.Port], "nats-server", o.host)
		}
		return nil, fmt.Errorf("nats-server: %w (%s)", err, startHint(err, o.host, "another loom up or nats-server running? choose another --nats-port / --monitor-port"))
	}
	s.nats = ns
	s.stops = append(s.stops, ns.Shutdown)
	s.env = [][2]string{{"NATS_SERVER", ns.ClientURL()}, {"LOOM_DISCOVERY", o.discovery}}
	if o.discovery == "etcd" {
		eo := etcdserver.Options{
			Dir: filepath.Join(o.dataDir, "etcd"), Host: o.host, ClientPort: o.etcdPort, PeerPort: o.etcdPeer, Logger: log,
		}
		if o.advertise != "" {
			// etcd gives its client URL to the clients that sync their
			// endpoints from the member list: the one they can dial.
			eo.Configure = func(c *embed.Config) {
				for i, u := range c.AdvertiseClientUrls {
					u.Host = net.JoinHostPort(o.advertise, u.Port())
					c.AdvertiseClientUrls[i] = u
				}
			}
		}
		es, err := etcdserver.Start(eo)
		if err != nil {
			var le *etcdserver.ListenError
			if errors.Is(err, etcdserver.ErrDirInUse) {
				return nil, fmt.Errorf("--data-dir %s: its etcd database is in use by another etcd server (a stray loom up or etcd?): stop it, or give this loom up another --data-dir", o.dataDir)
			}
			if errors.As(err, &le) {
				return nil, portError(le.Addr, le.Err, map[string]string{"client": "--etcd-port", "peer": "--etcd-peer-port"}[le.Port], "etcd", o.host)
			}
			return nil, fmt.Errorf("etcd: %w (%s)", err, startHint(err, o.host, "another loom up or etcd running? choose another --etcd-port / --etcd-peer-port"))
		}
		// etcd stops before nats-server, as deferred calls did.
		s.stops = append([]func(){func() { es.Close() }}, s.stops...)
		s.env = append(s.env, [2]string{"ETCD_ENDPOINTS", es.ClientURL()})
	}
	if o.zmqBroker != "" {
		benv, stopBroker, err := startZMQBroker(o.host, o.zmqBroker, o.brokerPeers, brokerLog)
		if err != nil {
			return nil, err
		}
		s.stops = append([]func(){stopBroker}, s.stops...)
		s.env = append(s.env, benv...)
	}
	return s, nil
}

// portError says, in loom up's own terms, that server could not listen on
// addr, the port of flag: the embedded servers' errors name the Go fields
// of their options, which a user of loom up does not set.
func portError(addr string, err error, flag, server, host string) error {
	_, port, _ := net.SplitHostPort(addr)
	what := fmt.Sprintf("%s: %s %s", server, flag, port)
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		free := "0 picks a free one"
		if flag == "--monitor-port" {
			free = "0 turns monitoring off"
		}
		return fmt.Errorf("%s: %w (another loom up or %s running? stop it, or choose another %s; %s)", what, err, server, flag, free)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("%s: %w (--host %s is not an address of this machine)", server, err, host)
	}
	return fmt.Errorf("%s: %w (check --host and %s)", what, err, flag)
}

// startHint says what to do about a server that did not start: inUse when
// a port was taken, else what else loom up's flags decide.
func startHint(err error, host, inUse string) string {
	// nats-server reports its monitoring port's failure as text only.
	if errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use") {
		return inUse
	}
	if errors.Is(err, syscall.EADDRNOTAVAIL) || strings.Contains(err.Error(), "cannot assign requested address") {
		return "--host " + host + " is not an address of this machine"
	}
	return "check --host and --data-dir"
}

// lockDataDir takes the data directory for this loom up alone, so that a
// second one on it fails at once instead of sharing the first's JetStream
// store or waiting for etcd's database lock.
func lockDataDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("--data-dir %s: %w (give loom up a directory it can write)", dir, err)
	}
	unlock, err = datadir.Lock(dir, "loom-up.lock", 0o644)
	switch {
	case errors.Is(err, datadir.ErrInUse):
		return nil, fmt.Errorf("--data-dir %s is in use by another loom up: stop it, or give this one another --data-dir", dir)
	case err != nil:
		return nil, fmt.Errorf("--data-dir %s: %w (give loom up a directory it can write)", dir, err)
	}
	return unlock, nil
}
