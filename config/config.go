// Package config holds Loom's configuration and loads it in layers.
//
// Precedence, lowest first:
//
//  1. built-in defaults (the `default` tag of each field below)
//  2. /opt/loom/defaults/*.toml, in name order
//  3. /opt/loom/etc/*.toml, in name order
//  4. the file named by LOOM_CONFIG
//  5. environment variables: LOOM_<KEY> (the key upper-cased, dots as
//     underscores) and the names the NATS and etcd tooling already uses
//     (NATS_SERVER, NATS_AUTH_*, ETCD_ENDPOINTS, ETCD_AUTH_*), listed in each
//     key's `env` tag
//  6. values set in code with [WithValue]
//
// Every key is a field of [Config]; its dotted name comes from the `key`
// tags of the field and its parents. Load records where each effective value
// came from, so `loom config` can print it, and a bad value is an error that
// names the key, the value and its source.
//
// TOML files nest tables by key, so nats.url is
//
//	[nats]
//	url = "nats://nats.internal:4222"
//
// or the dotted `nats.url = "..."`. A key that is not in the table is an
// error, as is a file that is not valid TOML; a directory that does not exist
// is skipped, but LOOM_CONFIG naming a missing file is an error.
//
// Values are written as follows. Environment variables, `default` tags and
// [WithValue] use the text form; files may also use the TOML type.
//
//   - string: as is.
//   - []string: comma-separated ("a,b"), spaces around items trimmed; in a
//     file, also an array of strings.
//   - int: decimal, such as 8080 or -1; in a file, also an integer.
//   - bool: true or false (also 1/0, t/f); in a file, also a boolean.
//   - float64: decimal, such as 0.5; in a file, also a number.
//   - time.Duration: Go syntax such as 30s, 1m30s or 250ms; in a file, also
//     an integer number of seconds (timeout = 30 is 30s).
//
// An environment variable set to the empty string counts as unset. The
// `enum` tag lists a key's allowed values, the `min` and `max` tags bound
// it, and the `nonzero` tag refuses 0 where what reads the key would take
// it for something else than its description says (a built-in default,
// mostly), saying what to write instead; Load checks them for every value it applies, and [Config.Validate]
// checks a Config built in code. [Markdown] renders the table of keys that
// the README shows; [Loaded.Table] is what `loom config` prints, with
// secrets masked.
package config

import "time"

// Config is the whole of a Loom process's configuration.
type Config struct {
	NATS         NATS         `key:"nats"`
	Discovery    Discovery    `key:"discovery"`
	RequestPlane RequestPlane `key:"request_plane"`
	Client       Client       `key:"client"`
	Shutdown     Shutdown     `key:"shutdown"`
	Log          Log          `key:"log"`
	Status       Status       `key:"status"`
	Queue        Queue        `key:"queue"`
	Events       Events       `key:"events"`
	Tracing      Tracing      `key:"tracing"`
	Health       Health       `key:"health"`
}

// Tracing tunes OpenTelemetry tracing. The SDK itself is set up from the
// standard OTEL_* variables (see docs/observability.md).
type Tracing struct {
	Enabled bool `key:"enabled" default:"true" doc:"Trace requests, events and jobs when a TracerProvider is installed; false makes no spans at all."`
}

// Health tunes the canary health checks of endpoints served with a health
// request (loom.WithHealthCheck).
type Health struct {
	CanaryIdle    time.Duration `key:"canary_idle" default:"10s" min:"0s" doc:"An endpoint with a health request that served nothing for this long is sent it; 0 turns canaries off."`
	CanaryTimeout time.Duration `key:"canary_timeout" default:"3s" min:"1ms" doc:"How long a canary may take to answer before /health reports its endpoint not ready."`
}

// NATS is the connection every plane that uses NATS shares.
type NATS struct {
	URL                 string        `key:"url" env:"NATS_SERVER" default:"nats://127.0.0.1:4222" doc:"NATS server URL; several, comma-separated, for a cluster. tls:// asks for TLS."`
	Name                string        `key:"name" default:"loom" doc:"Connection name shown by the NATS server's monitoring."`
	User                string        `key:"user" env:"NATS_AUTH_USERNAME" doc:"User for user/password auth (with nats.password)."`
	Password            string        `key:"password" env:"NATS_AUTH_PASSWORD" secret:"true" doc:"Password for user/password auth."`
	Token               string        `key:"token" env:"NATS_AUTH_TOKEN" secret:"true" doc:"Token for token auth."`
	NKey                string        `key:"nkey" env:"NATS_AUTH_NKEY" secret:"true" doc:"NKey seed (SU...) or the path of a file holding it, for NKey auth."`
	CredentialsFile     string        `key:"credentials_file" env:"NATS_AUTH_CREDENTIALS_FILE" doc:"Path of a .creds file (user JWT and NKey seed) for JWT auth."`
	TLSCAFile           string        `key:"tls_ca_file" doc:"PEM file of CAs to verify the server with; setting it turns TLS on."`
	TLSCertFile         string        `key:"tls_cert_file" doc:"PEM client certificate for mutual TLS (with nats.tls_key_file)."`
	TLSKeyFile          string        `key:"tls_key_file" doc:"PEM key of the client certificate."`
	ConnectTimeout      time.Duration `key:"connect_timeout" default:"5s" min:"0s" nonzero:"0 would leave no time to connect; write a positive duration such as 5s" doc:"How long the first connection may take before start-up fails."`
	ReconnectWait       time.Duration `key:"reconnect_wait" default:"1s" min:"0s" nonzero:"0 is read as unset, a pause of 1s, not as no pause; write a positive pause such as 10ms" doc:"Pause between reconnect attempts."`
	MaxReconnects       int           `key:"max_reconnects" default:"-1" min:"-1" doc:"Reconnect attempts before giving up; -1 retries forever."`
	ReconnectBufferSize int           `key:"reconnect_buffer_size" default:"8388608" min:"-1" nonzero:"0 is read as unset, 8 MiB, not as no buffer; write -1 to buffer nothing or a positive number of bytes" doc:"Bytes of publishes buffered while reconnecting; beyond it a publish fails. -1: none, a publish while reconnecting fails at once."`
}

// Discovery chooses and tunes the discovery backend.
type Discovery struct {
	Backend       string        `key:"backend" env:"LOOM_DISCOVERY" default:"memory" enum:"memory,etcd,natskv,kubernetes" doc:"Where instances are registered: memory (one process), etcd, natskv (NATS only), or kubernetes (Lease objects on the API server)."`
	EtcdEndpoints []string      `key:"etcd_endpoints" env:"ETCD_ENDPOINTS" default:"http://127.0.0.1:2379" doc:"etcd client URLs, comma-separated."`
	LeaseTTL      time.Duration `key:"lease_ttl" default:"10s" min:"1s" doc:"How long an instance outlives its process's last keep-alive; rounded up to whole seconds, and on etcd to at least etcd's minimum lease TTL, 1.5 election timeouts (2s with etcd's defaults)."`
	DialTimeout   time.Duration `key:"dial_timeout" default:"5s" min:"0s" nonzero:"0 would leave no time to reach the store; write a positive duration such as 5s" doc:"How long reaching the discovery store may take before start-up fails."`
	// Keys of the etcd backend's authentication and TLS, set by the
	// variables Dynamo's etcd client reads.
	EtcdUsername    string `key:"etcd_username" env:"ETCD_AUTH_USERNAME" doc:"etcd user for user/password auth, with discovery.etcd_password."`
	EtcdPassword    string `key:"etcd_password" env:"ETCD_AUTH_PASSWORD" secret:"true" doc:"Password of discovery.etcd_username."`
	EtcdTLSCAFile   string `key:"etcd_tls_ca_file" env:"ETCD_AUTH_CA" doc:"CAs to verify etcd with: a PEM file, or the PEM text itself (a value beginning with -----BEGIN). Needs https:// endpoints, which without it are verified with the system's CAs. A file is read again when it changes."`
	EtcdTLSCertFile string `key:"etcd_tls_cert_file" env:"ETCD_AUTH_CLIENT_CERT" doc:"Client certificate for mutual TLS with etcd, with discovery.etcd_tls_key_file: a PEM file or PEM text. Needs https:// endpoints. A file is read again when it changes."`
	EtcdTLSKeyFile  string `key:"etcd_tls_key_file" env:"ETCD_AUTH_CLIENT_KEY" secret:"true" doc:"Key of discovery.etcd_tls_cert_file: a PEM file or PEM text."`
	// Keys of the kubernetes backend.
	Kubeconfig          string `key:"kubeconfig" env:"KUBECONFIG" doc:"kubeconfig file(s) the kubernetes backend reaches the API server with; empty: the Pod's service account in a cluster, else ~/.kube/config."`
	KubernetesNamespace string `key:"kubernetes_namespace" env:"POD_NAMESPACE" doc:"Kubernetes namespace of the kubernetes backend's Lease records; empty: the Pod's, else the kubeconfig context's, else default."`
	PodName             string `key:"pod_name" env:"POD_NAME" doc:"Name of the Pod this process runs in (downward API metadata.name); with pod_uid, the Pod owns the kubernetes backend's records, which Kubernetes deletes with it."`
	PodUID              string `key:"pod_uid" env:"POD_UID" doc:"UID of the Pod this process runs in (downward API metadata.uid); see pod_name."`
}

// RequestPlane chooses how requests travel between processes.
type RequestPlane struct {
	Transport            string        `key:"transport" default:"tcp" enum:"tcp,nats" doc:"Request plane this process serves on: tcp (Loom's multiplexed protocol) or nats (for instances that cannot reach each other directly). Callers follow each instance's record, so both can be mixed."`
	Host                 string        `key:"host" default:"127.0.0.1" doc:"Address the TCP request plane listens on; also the advertised address unless advertise is set. 0.0.0.0 listens everywhere (then set advertise)."`
	Port                 int           `key:"port" default:"0" min:"0" max:"65535" doc:"TCP port to listen on; 0 picks a free one."`
	Advertise            string        `key:"advertise" doc:"host:port other processes use to reach this one, if not host:port."`
	Codec                string        `key:"codec" default:"msgpack" enum:"msgpack,json" doc:"Encoding of requests and responses served by this process."`
	MaxConcurrentStreams int           `key:"max_concurrent_streams" default:"10000" min:"1" max:"1048576" doc:"Requests this process serves at once over the network; more wait in the queue."`
	QueueSize            int           `key:"queue_size" default:"1024" min:"-1" nonzero:"0 is read as unset, a queue of 1024, not as no queue; write -1 for no queue or a positive count" doc:"Requests that may wait for a slot; beyond it a request is refused at once with ErrOverloaded (retried elsewhere). -1: no queue."`
	MaxStreamsPerConn    int           `key:"max_streams_per_conn" default:"0" min:"-1" doc:"Requests, running and queued, one client connection (one NATS caller) may hold, so that one client cannot take every slot; beyond it its requests are refused with ErrOverloaded. 0: half of max_concurrent_streams when that is 64 or more, else no limit; -1: no limit."`
	MaxRunningBytes      int           `key:"max_running_bytes" default:"268435456" min:"1" max:"274877906944" doc:"Request bytes held by running requests; beyond it new requests wait in the queue (which holds at most 64 MiB)."`
	MaxConns             int           `key:"max_conns" default:"4096" min:"-1" nonzero:"0 would hold no connection; write -1 for no limit or a positive count" doc:"TCP connections the request plane holds at once; one accepted beyond it is closed at once. -1: no limit."`
	FrameTimeout         time.Duration `key:"frame_timeout" default:"10s" nonzero:"0 is read as unset, 10s, not as no bound; write a negative duration such as -1s for no bound or a positive one" doc:"How long one frame may take to arrive whole once its first byte has; a peer trickling bytes is dropped. Negative: no bound."`
	IdleTimeout          time.Duration `key:"idle_timeout" default:"5m" nonzero:"0 is read as unset, 5m, not as never; write a negative duration such as -1s for never or a positive one" doc:"How long a connection may hold no request before the server asks its client to close it (GOAWAY, not draining: the client dials anew for its next request); a client that keeps it open anyway, pinging, is dropped. Only requests count, not pings. Negative: never."`
	MaxQueuedPongs       int           `key:"max_queued_pongs" default:"256" min:"1" doc:"Keepalive replies (PONG) that may wait unsent on a connection before its peer, which pings without reading, is dropped."`
	ConnsPerHost         int           `key:"conns_per_host" default:"0" min:"0" max:"64" doc:"TCP connections a client keeps to each instance address; streams share them. 0: one per 4 CPUs (GOMAXPROCS), at least 1, so that writes on many cores do not all queue on one connection."`
	MaxFrameSize         int           `key:"max_frame_size" default:"4194304" min:"65536" max:"67108864" doc:"Largest frame accepted, so the largest request or response item, in bytes."`
	KeepaliveInterval    time.Duration `key:"keepalive_interval" default:"5s" nonzero:"0 is read as unset, 5s; write a negative duration such as -1s to disable keepalive or a positive one" doc:"Silence on a connection before a ping; negative disables keepalive, and with it idle_timeout and, on TCP, stall_timeout."`
	KeepaliveTimeout     time.Duration `key:"keepalive_timeout" default:"5s" min:"30ms" doc:"How long a pinged peer may stay silent before its connection is dropped and its streams fail. On NATS, how long a call that has responded may go without a message or heartbeat from its server before it fails. At least 30ms: NATS servers heartbeat at a third of it, but at most every 10ms."`
	StallTimeout         time.Duration `key:"stall_timeout" default:"400ms" nonzero:"0 is read as unset, 400ms, not as off; write a negative duration such as -1s for off or a positive one" doc:"How long a server may leave this process's calls unanswered before it is deemed frozen: calls still waiting for their first response are retried on another instance, and new calls avoid it until it answers again. On TCP it is how long a ping, sent after a quarter of it of silence, may go unanswered; on NATS how long a call may go without a response or heartbeat (servers heartbeat at a third of it, but at most every 10ms, so it is at least 30ms). Negative: off."`
	TLSCertFile          string        `key:"tls_cert_file" doc:"PEM certificate this process serves with (and presents to servers that ask, for mutual TLS). Setting it turns TLS on for serving."`
	TLSKeyFile           string        `key:"tls_key_file" doc:"PEM key of tls_cert_file."`
	TLSCAFile            string        `key:"tls_ca_file" doc:"PEM CAs to verify peers with. Setting it turns TLS on for calling."`
	TLSClientAuth        bool          `key:"tls_client_auth" default:"false" doc:"Require and verify client certificates (mutual TLS) against tls_ca_file."`
}

// Client tunes how calls are routed.
type Client struct {
	Router          string        `key:"router" default:"round_robin" enum:"round_robin,random,power_of_two,least_loaded" doc:"How a client picks an instance for each request."`
	WaitTimeout     time.Duration `key:"wait_timeout" default:"5s" min:"0s" doc:"How long a call waits for an instance to appear before failing with ErrNoInstances; also how long a call that every known instance refused as draining or unreachable waits for a new one. 0: fail at once."`
	Retry           bool          `key:"retry" default:"true" doc:"Retry a request on another instance when the first fails before its first response."`
	FailureCooldown time.Duration `key:"failure_cooldown" default:"2s" min:"0s" doc:"How long an instance whose connection failed is avoided while others are available."`
	LocalFastPath   bool          `key:"local_fast_path" default:"true" doc:"Call instances in this process directly, without serialization. Off forces every call through the network (for benchmarks and tests)."`
}

// Shutdown tunes graceful shutdown.
type Shutdown struct {
	GracePeriod time.Duration `key:"grace_period" default:"10s" min:"0s" doc:"How long in-flight requests may finish after SIGTERM before they are cancelled."`
	Timeout     time.Duration `key:"timeout" default:"30s" min:"0s" nonzero:"0 would exit at once with code 911, as a shutdown that did not finish, even when main returns by itself; write a positive limit such as 30s" doc:"Hard limit from SIGTERM (or main returning by itself) to exit; past it the process exits with code 911."`
}

// Log tunes the process's log.
type Log struct {
	Level  string `key:"level" default:"info" enum:"debug,info,warn,error" doc:"Lowest level logged."`
	Format string `key:"format" default:"text" enum:"text,json" doc:"Log line format."`
}

// Status tunes the process's HTTP status server: /live, /health, /metrics
// and /metadata.
type Status struct {
	Port int    `key:"port" default:"0" min:"-1" max:"65535" doc:"Port of the status server (/live, /health, /metrics, /metadata); 0 turns it off, -1 picks a free port."`
	Host string `key:"host" default:"127.0.0.1" doc:"Address the status server listens on."`
}

// Queue holds the defaults of work queues (package workqueue) and of the
// EventBus (package eventbus); code can override each of them per queue.
type Queue struct {
	Storage           string        `key:"storage" default:"file" enum:"file,memory" doc:"Where work queue and EventBus streams (and their dead letters and offloaded payloads) keep messages: file (survives a server restart) or memory; events.jetstream.storage is the event plane's."`
	Replicas          int           `key:"replicas" env:"NATS_STREAM_REPLICAS" default:"1" min:"1" max:"5" doc:"Copies of each work queue, EventBus and dead-letter stream in a NATS cluster; 3 survives losing a node."`
	MaxMsgs           int           `key:"max_msgs" default:"-1" min:"-1" nonzero:"0 is read as unset, no limit, not as a queue that holds nothing; write -1 for no limit or a positive count" doc:"Most jobs a queue holds; an enqueue into a full queue is retried until its deadline or queue.enqueue_timeout, then fails with the server's error. -1: no limit."`
	MaxBytes          int           `key:"max_bytes" default:"-1" min:"-1" nonzero:"0 is read as unset, no limit, not as a queue that holds nothing; write -1 for no limit or a positive number of bytes" doc:"Most bytes a queue holds; beyond it an enqueue fails. -1: no limit."`
	MaxAge            time.Duration `key:"max_age" default:"0s" min:"0s" doc:"Jobs older than this are dropped unprocessed; 0 keeps them until they are handled, else at least 100ms."`
	Codec             string        `key:"codec" default:"msgpack" enum:"msgpack,json" doc:"Encoding of typed jobs (a queue of []byte carries the bytes as they are)."`
	AckWait           time.Duration `key:"ack_wait" default:"30s" min:"100ms" doc:"How long a delivered job may go without an ack or progress report before the server redelivers it."`
	MaxDeliver        int           `key:"max_deliver" default:"5" min:"1" doc:"Attempts at a job before it is moved to the dead-letter stream with its last error."`
	BackoffInitial    time.Duration `key:"backoff_initial" default:"1s" min:"0s" nonzero:"0 is read as unset, 1s, not as no delay; write a positive delay such as 10ms" doc:"Delay before the second attempt at a failed job; it doubles with each further attempt."`
	BackoffMax        time.Duration `key:"backoff_max" default:"1m" min:"0s" nonzero:"0 is read as unset, 1m, not as no delay; write a positive delay, at least queue.backoff_initial" doc:"Longest delay between attempts at a failed job."`
	HandlerTimeout    time.Duration `key:"handler_timeout" default:"5m" min:"0s" doc:"How long a handler may run, kept alive by progress reports every ack_wait/2; past it its context ends (it is the context's deadline) and the job is redelivered after ack_wait. 0: ack_wait."`
	Concurrency       int           `key:"concurrency" default:"16" min:"1" max:"100000" doc:"Jobs a consumer handles at once."`
	MaxPending        int           `key:"max_pending" default:"4096" min:"1" doc:"Asynchronous enqueues awaiting the server's acknowledgement; beyond it EnqueueAsync waits for room."`
	EnqueueTimeout    time.Duration `key:"enqueue_timeout" default:"10s" min:"1ms" doc:"How long an enqueue keeps retrying through a server restart or leader election when the caller's context has no deadline."`
	LargePayloads     string        `key:"large_payloads" default:"offload" enum:"offload,reject" doc:"Jobs and events above the server's max_payload: offload (stored in the JetStream object store, the message carries a reference) or reject (an error naming the size and the limit)."`
	ObjectBucket      string        `key:"object_bucket" default:"loom_payloads" doc:"JetStream object store bucket that offloaded payloads go to."`
	DeadLetterMaxAge  time.Duration `key:"dead_letter_max_age" default:"720h" min:"0s" doc:"How long dead-lettered jobs are kept for inspection and requeueing; 0 keeps them forever, else at least 100ms."`
	EventBusJetStream bool          `key:"eventbus_jetstream" env:"NATS_USE_JETSTREAM" default:"false" doc:"EventBus consumers use JetStream (a durable consumer per group, redelivery, dead letters) instead of Core NATS queue groups."`
	EventBusMaxAge    time.Duration `key:"eventbus_max_age" default:"24h" min:"0s" doc:"How long JetStream EventBus streams keep events; 0 keeps them until other limits apply, else at least 100ms."`
}

// Events tunes the event plane (package events): how events travel, how
// they are encoded, and what a subscription does when its reader is slow.
type Events struct {
	Transport    string          `key:"transport" default:"nats" enum:"nats,zmq,jetstream" doc:"How events travel: nats (core NATS), zmq (ZeroMQ, direct to each publisher found in discovery, or through a broker when events.zmq.broker_* are set) or jetstream (durable: kept in a stream, replayable, acknowledged). Publishers and subscribers must use the same one."`
	Codec        string          `key:"codec" default:"msgpack" enum:"msgpack,json" doc:"Encoding of the events this process publishes; subscribers read both."`
	Envelope     string          `key:"envelope" default:"dynamo" enum:"dynamo,compact" doc:"Form of a MessagePack envelope this process publishes: dynamo (Dynamo's named map, milliseconds; Dynamo subscribers read it) or compact (Loom's positional array, 86 bytes shorter, Loom subscribers only); subscribers read both."`
	BufferSize   int             `key:"buffer_size" default:"4096" min:"1" doc:"Events a subscription holds for a slow reader before events.overflow applies; with jetstream, the events delivered and not yet acknowledged."`
	Overflow     string          `key:"overflow" default:"drop_oldest" enum:"drop_oldest,drop_newest,block" doc:"What a full subscription buffer does: drop_oldest or drop_newest (counted as dropped), or block (push back into the transport, whose own bounded buffer then drops events: counted as dropped on nats, by the publisher on zmq). jetstream always pushes back."`
	MaxEventSize int             `key:"max_event_size" default:"1048576" min:"1024" max:"67108864" doc:"Largest encoded event in bytes: Publish refuses larger ones, subscribers count them as malformed."`
	ZMQ          EventsZMQ       `key:"zmq"`
	JetStream    EventsJetStream `key:"jetstream"`
}

// EventsZMQ tunes the ZeroMQ event transport.
type EventsZMQ struct {
	Host      string `key:"host" default:"127.0.0.1" doc:"Address each direct-mode publisher's PUB socket listens on (on a free port)."`
	Advertise string `key:"advertise" doc:"Host subscribers dial to reach this process's publishers, if not events.zmq.host (set it when host is 0.0.0.0)."`
	SendQueue int    `key:"send_queue" default:"8192" min:"1" doc:"Events a publisher queues for each subscriber; events for a subscriber further behind are dropped for it (it counts them as lost)."`
	MaxPeers  int    `key:"max_peers" default:"4096" min:"-1" nonzero:"0 would hold no connection; write -1 for no limit or a positive count" doc:"Connections a direct-mode publisher's PUB socket holds at once (subscribers, and connections still in the handshake); one accepted beyond it is closed at once, and one that leaves frees its place. -1: no limit."`
	BrokerPub string `key:"broker_pub" doc:"Endpoint (tcp://host:port) of a broker's XSUB side, which publishers connect to; with broker_sub, zmq goes through the broker instead of direct."`
	BrokerSub string `key:"broker_sub" doc:"Endpoint of the broker's XPUB side, which subscribers connect to."`
}

// EventsJetStream tunes the durable (JetStream) event transport.
type EventsJetStream struct {
	Stream     string        `key:"stream" default:"LOOM_EVENTS" doc:"Stream holding durable events (subjects loom.events.>); the first process to need it creates it with the limits below."`
	Storage    string        `key:"storage" default:"file" enum:"file,memory" doc:"Where the stream keeps events."`
	Replicas   int           `key:"replicas" default:"1" min:"1" max:"5" doc:"Copies of the stream in a NATS cluster."`
	MaxAge     time.Duration `key:"max_age" default:"24h" min:"0s" doc:"How long events are kept; 0 keeps them until another limit applies, else at least 100ms."`
	MaxBytes   int           `key:"max_bytes" default:"1073741824" min:"-1" nonzero:"0 is read as unset, no limit, not as a stream that holds nothing; write -1 for no limit or a positive number of bytes" doc:"Bytes the stream may hold; -1 for no limit."`
	MaxMsgs    int           `key:"max_msgs" default:"-1" min:"-1" nonzero:"0 is read as unset, no limit, not as a stream that holds nothing; write -1 for no limit or a positive count" doc:"Events the stream may hold; -1 for no limit."`
	Discard    string        `key:"discard" default:"old" enum:"old,new" doc:"At a limit: old removes the oldest events (a subscriber that had not read them counts them as lost), new refuses new ones (Publish fails)."`
	AckWait    time.Duration `key:"ack_wait" default:"30s" min:"1s" doc:"How long a delivered event may stay unacknowledged before it is delivered again."`
	MaxPending int           `key:"max_pending" default:"1024" min:"1" doc:"Publishes a publisher may have awaiting the stream's acknowledgement; Publish waits beyond it."`
}
