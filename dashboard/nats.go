package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/loomrt/loom/workqueue"
)

// readQueues lists the work queues through workqueue.Admin.
func (d *Dashboard) readQueues(ctx context.Context) Queues {
	nc, err := d.rt.NATS(ctx)
	if err != nil {
		return Queues{Error: "no NATS connection: " + err.Error(), Queues: []workqueue.Info{}}
	}
	a, err := workqueue.NewAdmin(nc)
	if err != nil {
		return Queues{Error: err.Error(), Queues: []workqueue.Info{}}
	}
	list, err := a.List(ctx)
	if err != nil {
		return Queues{Error: err.Error(), Queues: []workqueue.Info{}}
	}
	if list == nil {
		list = []workqueue.Info{}
	}
	return Queues{Queues: list}
}

// varz is the part of the NATS monitoring endpoint's /varz the dashboard
// shows.
type varz struct {
	at            time.Time
	ServerID      string  `json:"server_id"`
	Version       string  `json:"version"`
	Uptime        string  `json:"uptime"`
	Connections   int     `json:"connections"`
	InMsgs        int64   `json:"in_msgs"`
	OutMsgs       int64   `json:"out_msgs"`
	InBytes       int64   `json:"in_bytes"`
	SlowConsumers int64   `json:"slow_consumers"`
	Mem           int64   `json:"mem"`
	CPU           float64 `json:"cpu"`
}

// maxMonitorBytes bounds a /varz answer.
const maxMonitorBytes = 1 << 20

// decodeVarz reads a /varz answer: the decoder of the bytes the NATS
// monitoring endpoint sends.
func decodeVarz(r io.Reader) (*varz, error) {
	var v varz
	if err := json.NewDecoder(io.LimitReader(r, maxMonitorBytes)).Decode(&v); err != nil {
		return nil, fmt.Errorf("malformed /varz: %w", err)
	}
	if v.ServerID == "" {
		return nil, fmt.Errorf("malformed /varz: no server_id (is this a NATS monitoring endpoint?)")
	}
	return &v, nil
}

// monitorURL is the monitoring endpoint to read: the configured one, or
// the NATS server's host on 8222 (where `loom up` serves it).
func (d *Dashboard) monitorURL(connected string) string {
	switch m := d.cfg.NATSMonitorURL; m {
	case "off":
		return ""
	case "":
		u, err := url.Parse(connected)
		if err != nil || u.Hostname() == "" {
			return ""
		}
		return "http://" + net.JoinHostPort(u.Hostname(), "8222")
	default:
		return strings.TrimSuffix(m, "/")
	}
}

// readNATS reads the connection's state, the monitoring endpoint if it
// answers, and the JetStream account info.
func (d *Dashboard) readNATS(ctx context.Context) (NATS, *varz) {
	n := unknownNATS(d.rt.Config().NATS.URL)
	nc, err := d.rt.NATS(ctx)
	if err != nil {
		n.Error = err.Error()
		return n, nil
	}
	n.Connected = nc.IsConnected()
	if u := nc.ConnectedUrlRedacted(); u != "" {
		n.URL = u
	}
	n.ServerID, n.Version = nc.ConnectedServerId(), nc.ConnectedServerVersion()
	if rtt, err := nc.RTT(); err == nil {
		n.RTT = Num(float64(rtt) / float64(time.Millisecond))
	} else {
		n.Error = "round trip: " + err.Error()
	}
	var vz *varz
	if mu := d.monitorURL(nc.ConnectedUrl()); mu != "" {
		vz, err = d.getVarz(ctx, mu+"/varz")
		if err != nil {
			n.MonitorError = err.Error()
		} else {
			n.Monitor = mu
			n.Uptime = vz.Uptime
			n.Connections = Num(vz.Connections)
			n.SlowConsumers = Num(vz.SlowConsumers)
			n.Mem, n.CPU = Num(vz.Mem), Num(vz.CPU)
		}
	} else {
		n.MonitorError = "no monitoring URL (--nats-monitor)"
	}
	js, err := jetstream.New(nc)
	if err == nil {
		var ai *jetstream.AccountInfo
		if ai, err = js.AccountInfo(ctx); err == nil {
			n.JetStream = &JetStream{
				Streams: ai.Streams, Consumers: ai.Consumers, Memory: ai.Memory, Storage: ai.Store,
				MaxMemory: ai.Limits.MaxMemory, MaxStorage: ai.Limits.MaxStore, APITotal: ai.API.Total, APIErrors: ai.API.Errors,
			}
		}
	}
	if err != nil {
		n.JetStreamError = err.Error()
	}
	return n, vz
}

// unknownNATS is the NATS view before anything was read.
func unknownNATS(url string) NATS {
	return NATS{URL: url, RTT: unknown, Connections: unknown, InMsgsPerSec: unknown,
		OutMsgsPerSec: unknown, InBytesPerSec: unknown, SlowConsumers: unknown, Mem: unknown, CPU: unknown}
}

func (d *Dashboard) getVarz(ctx context.Context, u string) (*varz, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := d.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("NATS monitoring endpoint %s: %w (set --nats-monitor, or off)", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("NATS monitoring endpoint %s: %s", u, resp.Status)
	}
	v, err := decodeVarz(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("NATS monitoring endpoint %s: %w", u, err)
	}
	v.at = time.Now()
	return v, nil
}

// natsRates turns two /varz readings into message rates; d.mu is held.
func (d *Dashboard) natsRates(n *NATS, vz *varz, now time.Time) {
	prev := d.natsPrev
	d.natsPrev = vz
	if vz == nil || prev == nil || prev.ServerID != vz.ServerID {
		return
	}
	dt := vz.at.Sub(prev.at).Seconds()
	if dt <= 0 {
		return
	}
	n.InMsgsPerSec = Num(math.Max(0, float64(vz.InMsgs-prev.InMsgs)) / dt)
	n.OutMsgsPerSec = Num(math.Max(0, float64(vz.OutMsgs-prev.OutMsgs)) / dt)
	n.InBytesPerSec = Num(math.Max(0, float64(vz.InBytes-prev.InBytes)) / dt)
}

// serving sums the serving view's families over the processes.
func serving(samples map[string][]*sample, prefixes []string) Serving {
	sv := Serving{Prefixes: prefixes, Families: []ServingFamily{}}
	type acc struct {
		f                 ServingFamily
		rateSum           float64
		rateKnown         bool
		window            histogram
		count, sum, total float64
	}
	accs := map[string]*acc{}
	for _, ring := range samples {
		last := ring[len(ring)-1]
		if last.err != "" {
			continue
		}
		var first, prev *sample
		for _, s := range ring[:len(ring)-1] {
			if s.err == "" {
				if first == nil {
					first = s
				}
				prev = s
			}
		}
		for name, fam := range last.serving {
			a := accs[name]
			if a == nil {
				a = &acc{f: ServingFamily{Name: name, Help: fam.help, Kind: fam.kind}}
				accs[name] = a
			}
			a.f.Processes++
			for _, s := range fam.series {
				a.total += s.value
				if fam.kind == "histogram" {
					a.count += s.hist.count
					a.sum += s.hist.sum
				}
			}
			if prev != nil {
				if pf := prev.serving[name]; pf != nil {
					dt := last.at.Sub(prev.at).Seconds()
					if dt > 0 {
						a.rateSum += max(0, sumValues(fam)-sumValues(pf)) / dt
						a.rateKnown = true
					}
				}
			}
			if fam.kind == "histogram" && first != nil {
				cur, old := sumHist(fam), histogram{}
				if ff := first.serving[name]; ff != nil {
					old = sumHist(ff)
				}
				a.window = a.window.add(cur.sub(old))
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(accs)) {
		a := accs[name]
		f := a.f
		f.Value, f.RatePerSec, f.P50, f.P99, f.Mean = Num(a.total), unknown, unknown, unknown, unknown
		if a.rateKnown && (f.Kind == "counter" || f.Kind == "histogram") {
			f.RatePerSec = Num(a.rateSum)
		}
		if f.Kind == "histogram" {
			f.P50, f.P99 = Num(a.window.quantile(0.5)), Num(a.window.quantile(0.99))
			if a.count > 0 {
				f.Mean = Num(a.sum / a.count)
			}
		}
		sv.Families = append(sv.Families, f)
	}
	sv.Summary = summarize(sv.Families)
	return sv
}

// The families the serving summary reads: the LLM frontend's (package
// llm/frontend) and a KV hit rate gauge if a worker or router exports one.
const (
	famRequests = "loom_llm_requests_total"
	famInFlight = "loom_llm_requests_in_flight"
	famTokens   = "loom_llm_output_tokens_total"
	famTTFT     = "loom_llm_time_to_first_token_seconds"
	famITL      = "loom_llm_inter_token_latency_seconds"
	famKVHit    = "loom_llm_kv_hit_rate"
)

func summarize(fams []ServingFamily) ServingSummary {
	sum := ServingSummary{RequestsPerSec: unknown, InFlight: unknown, TokensPerSec: unknown,
		TTFTP50: unknown, TTFTP99: unknown, ITLP50: unknown, KVHitRate: unknown, KVUsage: unknown, Waiting: unknown}
	for _, f := range fams {
		switch f.Name {
		case famRequests:
			sum.RequestsPerSec = f.RatePerSec
		case famInFlight:
			sum.InFlight = f.Value
		case famTokens:
			sum.TokensPerSec = f.RatePerSec
		case famTTFT:
			sum.TTFTP50, sum.TTFTP99 = f.P50*1000, f.P99*1000
		case famITL:
			sum.ITLP50 = f.P50 * 1000
		case famKVHit:
			// A gauge per process: their mean.
			if f.Processes > 0 {
				sum.KVHitRate = f.Value / Num(f.Processes)
			}
		}
	}
	return sum
}

func sumValues(f *family) float64 {
	t := 0.0
	for _, s := range f.series {
		t += s.value
	}
	return t
}

func sumHist(f *family) histogram {
	var h histogram
	for _, s := range f.series {
		h = h.add(s.hist)
	}
	return h
}
