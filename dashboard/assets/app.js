// The Loom dashboard page: reads /api/stream (server-sent events, one
// "state" event per change) and draws each section. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function num(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (Number.isInteger(v)) return String(v);
  return v.toFixed(digits);
}

function bytes(v) {
  if (v === null || v === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : v) + " " + u[i];
}

function age(s) {
  if (s === null || s === undefined) return "–";
  s = Math.floor(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + Math.floor(s / 3600) % 24 + "h";
}

function table(head, rows, empty) {
  if (!rows.length) return `<div class="empty">${esc(empty)}</div>`;
  const th = head.map((h) => (h.startsWith("#") ? `<th class="n">${esc(h.slice(1))}</th>` : `<th>${esc(h)}</th>`)).join("");
  return `<table><thead><tr>${th}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
}

const td = (v, cls = "") => `<td${cls ? ` class="${cls}"` : ""}>${v}</td>`;
const tdn = (v) => td(v, "n");

// A line chart of series [{values, color}] in an SVG with a 600x160 box.
function chart(svg, series) {
  const W = 600, H = 160, padL = 40, padB = 4, padT = 8;
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  let top = Math.max(1, ...all);
  const mag = Math.pow(10, Math.floor(Math.log10(top)));
  top = Math.ceil(top / mag) * mag;
  const n = Math.max(2, ...series.map((s) => s.values.length));
  const x = (i) => padL + (i * (W - padL - 4)) / (n - 1);
  const y = (v) => H - padB - ((H - padB - padT) * v) / top;
  let out = "";
  for (const f of [0, 0.5, 1]) {
    const yy = y(top * f);
    out += `<line class="grid" x1="${padL}" x2="${W}" y1="${yy}" y2="${yy}"/><text x="2" y="${yy + 3}">${esc(num(top * f))}</text>`;
  }
  for (const s of series) {
    const off = n - s.values.length;
    const pts = s.values.map((v, i) => (v === null || v === undefined ? null : `${x(i + off).toFixed(1)},${y(v).toFixed(1)}`)).filter(Boolean);
    out += `<polyline stroke="${s.color}" points="${pts.join(" ")}"/>`;
  }
  svg.innerHTML = out;
  const first = series[0].values;
  svg.dataset.points = String(first.length);
  svg.dataset.last = first.length ? String(first[first.length - 1] ?? "") : "";
}

function spark(values) {
  const v = (values || []).map((x) => x ?? 0);
  if (v.length < 2) return "";
  const top = Math.max(1, ...v);
  const pts = v.map((y, i) => `${((i * 80) / (v.length - 1)).toFixed(1)},${(17 - (16 * y) / top).toFixed(1)}`).join(" ");
  return `<svg class="spark" viewBox="0 0 80 18"><polyline points="${pts}"/></svg>`;
}

function tiles(st) {
  const t = st.totals;
  const tile = (label, v, bad) => `<div class="tile${bad ? " bad" : ""}"><div class="v">${v}</div><div class="l">${esc(label)}</div></div>`;
  $("tiles").innerHTML = [
    tile("instances", t.instances),
    tile("endpoints", t.endpoints),
    tile("requests/s", num(t.requests_per_second)),
    tile("in flight", num(t.in_flight, 0)),
    tile("errors/s", num(t.errors_per_second), t.errors_per_second > 0),
    tile("p50 ms", num(t.p50_ms, 2)),
    tile("p99 ms", num(t.p99_ms, 2)),
    tile("events/s", num(t.events_per_second)),
    tile("queued jobs", num(t.queue_jobs, 0)),
    tile("dead letters", num(t.dead_letters, 0), t.dead_letters > 0),
  ].join("");
}

function charts(st) {
  const h = st.history;
  chart($("chart-rps"), [
    { values: h.map((p) => p.requests_per_second), color: "var(--ok)" },
    { values: h.map((p) => p.errors_per_second), color: "var(--err)" },
  ]);
  chart($("chart-inflight"), [{ values: h.map((p) => p.in_flight), color: "var(--inflight)" }]);
  chart($("chart-p99"), [{ values: h.map((p) => p.p99_ms), color: "var(--p99)" }]);
  chart($("chart-events"), [{ values: h.map((p) => p.events_per_second), color: "var(--good)" }]);
}

// A build as the page shows it: the version, and the revision's first 12
// characters (as a Go pseudo-version has them); the full revision and the
// Go version are in its title. No build read: "–".
function build(b) {
  if (!b) return `<span class="build none">–</span>`;
  const rev = b.revision ? " · " + b.revision.slice(0, 12) : "";
  const title = `version ${b.version}\nrevision ${b.revision || "–"}\n${b.go_version || "Go version unknown"}`;
  return `<span class="build${b.version === "unknown" ? " unknown" : ""}" title="${esc(title)}" data-version="${esc(b.version)}">${esc(b.version + rev)}</span>`;
}

// More than one build among the instances: a rolling upgrade under way, or
// a process left on another build.
function buildsNote(st) {
  const bs = st.builds || [];
  const el = $("builds");
  el.hidden = bs.length < 2;
  el.dataset.builds = String(bs.length);
  if (el.hidden) { el.innerHTML = ""; return; }
  const shown = 6;
  const one = (b) => `<b class="mono" title="${esc(b.revision ? "revision " + b.revision : "")}">${esc(b.version + (b.revision ? " · " + b.revision.slice(0, 12) : ""))}</b> on ${b.instances} instance${b.instances === 1 ? "" : "s"}`;
  const parts = bs.slice(0, shown).map(one);
  if (bs.length > shown) parts.push(`${bs.length - shown} more`);
  el.innerHTML = `${bs.length} builds running: ${parts.join(", ")}`;
}

function topology(st) {
  if (st.discovery_error) {
    $("topology").innerHTML = `<div class="err-text">${esc(st.discovery_error)}</div>`;
    return;
  }
  if (!st.instances.length) {
    $("topology").innerHTML = `<div class="empty">${st.synced ? "No instances registered in " + esc(st.discovery) + " discovery." : "Reading discovery…"}</div>`;
    return;
  }
  const rows = [];
  let ns = null, comp = null, ep = null;
  for (const i of st.instances) {
    if (i.namespace !== ns) {
      ns = i.namespace; comp = null; ep = null;
      rows.push(`<tr class="ns" data-namespace="${esc(ns)}"><td colspan="15">${esc(ns)}</td></tr>`);
    }
    const path = `${i.namespace}/${i.component}/${i.endpoint}`;
    if (i.component !== comp || path !== ep) {
      comp = i.component; ep = path;
      const n = st.instances.filter((x) => x.namespace === i.namespace && x.component === i.component && x.endpoint === i.endpoint).length;
      rows.push(`<tr class="ep" data-endpoint-group="${esc(path)}"><td colspan="15">${esc(i.component)} › <b>${esc(i.endpoint)}</b> <span class="note">${n} instance${n === 1 ? "" : "s"}</span></td></tr>`);
    }
    const l = i.load;
    const transport = i.transport + (i.tls ? "+tls" : "");
    const loadCells = l
      ? [tdn(num(l.requests_per_second)), tdn(num(l.in_flight, 0)), tdn(`<span class="${l.errors_per_second > 0 ? "bad" : ""}">${num(l.errors_per_second)}</span>`),
         tdn(num(l.p50_ms, 2)), tdn(num(l.p99_ms, 2)), tdn(num(l.requests_total, 0)), td(spark(l.rate_history))]
      : [`<td colspan="7" class="note" title="${esc(i.load_error)}">${esc(i.load_error || "no load data")}</td>`];
    rows.push(`<tr class="inst" data-instance="${esc(i.id)}" data-endpoint="${esc(path)}" data-requests="${l ? l.requests_total : ""}">` +
      td(esc(i.id)) + td(esc(transport)) + td(esc(i.address), "mono") + td(esc(i.codec)) + tdn(age(i.age_seconds)) +
      td(`<span class="state ${esc(i.state)}">${esc(i.state)}</span>`) + td(esc(i.status_addr || "–"), "mono") + td(build(i.build)) + loadCells.join("") + "</tr>");
  }
  $("topology").innerHTML = table(["instance", "transport", "address", "codec", "#age", "state", "status", "build", "#req/s", "#in flight", "#err/s", "#p50 ms", "#p99 ms", "#requests", "req/s"], rows, "");
}

function eventsView(st) {
  const e = st.events;
  let h = `<div class="note">The dashboard's subscription: ${e.pattern ? `<span class="mono">${esc(e.pattern)}</span> over ${esc(e.transport)}, ${num(e.events_per_second)} events/s, ${num(e.received, 0)} received, <span class="${e.lost ? "bad" : ""}">${num(e.lost, 0)} lost</span>, ${num(e.dropped, 0)} dropped by its buffer` : "none"}${e.error ? ` <span class="err-text">${esc(e.error)}</span>` : ""}</div>`;
  h += table(["publisher", "instance", "subject", "topic", "codec", "#events/s", "#events", "#last seq", "#gaps", "#lost", "#last seen"],
    e.publishers.map((p) => `<tr data-publisher="${esc(p.id)}">` + td(esc(p.id), "mono") + td(esc(p.instance_id || "–"), "mono") + td(esc(p.subject), "mono") + td(esc(p.topic)) + td(esc(p.codec)) +
      tdn(num(p.events_per_second)) + tdn(num(p.events, 0)) + tdn(num(p.last_sequence, 0)) + tdn(`<span class="${p.gaps ? "bad" : ""}">${num(p.gaps, 0)}</span>`) +
      tdn(`<span class="${p.lost ? "bad" : ""}">${num(p.lost, 0)}</span>`) + tdn(age((Date.parse(st.time) - Date.parse(p.last_seen)) / 1000) + " ago") + "</tr>"),
    "No events heard yet.");
  if (e.published.length || e.subscriptions.length) {
    h += `<h2 style="margin-top:10px">Counters of the scraped processes</h2>`;
    h += table(["transport", "published subject", "#processes", "#events/s", "#published", "#publish errors", "#send dropped"],
      e.published.map((p) => "<tr>" + td(esc(p.transport)) + td(esc(p.subject), "mono") + tdn(p.processes) + tdn(num(p.events_per_second)) + tdn(num(p.published_total, 0)) +
        tdn(`<span class="${p.publish_errors_total ? "bad" : ""}">${num(p.publish_errors_total, 0)}</span>`) + tdn(`<span class="${p.send_dropped_total ? "bad" : ""}">${num(p.send_dropped_total, 0)}</span>`) + "</tr>"), "No publishers in the scraped processes.");
    h += table(["transport", "subscription pattern", "#processes", "#events/s", "#received", "#lost", "#dropped", "#malformed"],
      e.subscriptions.map((s) => "<tr>" + td(esc(s.transport)) + td(esc(s.pattern), "mono") + tdn(s.processes) + tdn(num(s.events_per_second)) + tdn(num(s.received_total, 0)) +
        tdn(`<span class="${s.lost_total ? "bad" : ""}">${num(s.lost_total, 0)}</span>`) + tdn(`<span class="${s.dropped_total ? "bad" : ""}">${num(s.dropped_total, 0)}</span>`) + tdn(num(s.malformed_total, 0)) + "</tr>"), "No subscriptions in the scraped processes.");
  }
  $("events").innerHTML = h;
}

function queues(st) {
  const q = st.queues;
  $("queues").innerHTML = (q.error ? `<div class="err-text">${esc(q.error)}</div>` : "") +
    table(["queue", "group", "codec", "#jobs", "#pending", "#in flight", "#redelivered", "#waiting pulls", "#dead letters", "#max deliver", "storage"],
      q.queues.map((x) => `<tr data-queue="${esc(x.name)}">` + td(esc(x.name), "mono") + td(esc(x.group)) + td(esc(x.codec)) + tdn(num(x.jobs, 0)) + tdn(num(x.pending, 0)) +
        tdn(num(x.in_flight, 0)) + tdn(num(x.redelivered, 0)) + tdn(num(x.waiting, 0)) + tdn(`<span class="${x.dead_letters ? "bad" : ""}">${num(x.dead_letters, 0)}</span>`) +
        tdn(x.max_deliver) + td(`${esc(x.storage)} ×${x.replicas}`) + "</tr>"),
      q.error ? "" : "No work queues on this NATS server.");
}

function nats(st) {
  const n = st.nats;
  const kv = [
    ["server", `<span class="mono">${esc(n.url)}</span> ${n.connected ? "" : '<span class="bad">not connected</span>'}`],
    ["version", esc(n.version || "–")],
    ["round trip", n.rtt_ms === null ? "–" : num(n.rtt_ms, 3) + " ms"],
  ];
  if (n.monitor) {
    kv.push(["uptime", esc(n.uptime)], ["connections", num(n.connections, 0)], ["msgs in/s", num(n.in_msgs_per_second)], ["msgs out/s", num(n.out_msgs_per_second)],
      ["bytes in/s", bytes(n.in_bytes_per_second)], ["slow consumers", `<span class="${n.slow_consumers ? "bad" : ""}">${num(n.slow_consumers, 0)}</span>`],
      ["memory", bytes(n.mem_bytes)], ["cpu", num(n.cpu_percent) + "%"]);
  } else if (n.monitor_error) {
    kv.push(["monitoring", `<span class="note">${esc(n.monitor_error)}</span>`]);
  }
  const j = n.jetstream;
  if (j) {
    kv.push(["JetStream streams", j.streams], ["consumers", j.consumers], ["storage", bytes(j.storage_bytes) + (j.max_storage_bytes > 0 ? " of " + bytes(j.max_storage_bytes) : "")],
      ["memory store", bytes(j.memory_bytes)], ["API calls", `${num(j.api_total, 0)} (<span class="${j.api_errors ? "bad" : ""}">${num(j.api_errors, 0)} errors</span>)`]);
  } else if (n.jetstream_error) {
    kv.push(["JetStream", `<span class="err-text">${esc(n.jetstream_error)}</span>`]);
  }
  if (n.error) kv.push(["error", `<span class="err-text">${esc(n.error)}</span>`]);
  $("nats").innerHTML = `<dl class="kv">${kv.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join("")}</dl>`;
}

function processes(st) {
  $("processes").innerHTML = table(["status server", "instances", "ready", "build", "error"],
    st.processes.map((p) => `<tr data-process="${esc(p.target)}">` + td(esc(p.target), "mono") + td(esc((p.instances || []).join(", ") || "–"), "mono") + td(p.ready === null ? "–" : p.ready ? "yes" : '<span class="bad">no</span>') + td(build(p.build)) + td(esc(p.error || ""), "err-text") + "</tr>"),
    "No status servers named in the instance records (run components with LOOM_STATUS_PORT=-1).");
}

function servingView(st) {
  const s = st.serving;
  const m = s.summary;
  // Shown once some process exports serving metrics (an LLM frontend) or
  // workers report their load, not merely because instances are named
  // backend/generate.
  $("serving-section").hidden = !s.families.length && !m.reporting_workers;
  if ($("serving-section").hidden) return;
  $("serving-prefixes").textContent = "metrics starting with " + s.prefixes.join(", ");
  const tile = (label, v) => `<div class="tile"><div class="v">${v}</div><div class="l">${esc(label)}</div></div>`;
  const pct = (v) => (v === null ? "–" : (v * 100).toFixed(1) + "%");
  $("serving").innerHTML = `<div class="tiles" id="serving-tiles">` + [
    tile("workers", m.workers),
    tile("requests/s", num(m.requests_per_second)),
    tile("in flight", num(m.in_flight, 0)),
    tile("tokens/s", num(m.output_tokens_per_second)),
    tile("TTFT p50 ms", num(m.ttft_p50_ms, 1)),
    tile("TTFT p99 ms", num(m.ttft_p99_ms, 1)),
    tile("ITL p50 ms", num(m.itl_p50_ms, 2)),
    tile("KV hit rate", pct(m.kv_hit_rate)),
    tile("KV cache used", pct(m.kv_usage)),
    tile("waiting", num(m.waiting, 0)),
  ].join("") + `</div>` + (s.families.length ? `<div style="height:8px"></div>` : "") + table(["metric", "kind", "#processes", "#value", "#per second", "#p50", "#p99", "#mean", "what it is"],
    s.families.map((f) => `<tr data-family="${esc(f.name)}">` + td(esc(f.name), "mono") + td(esc(f.kind)) + tdn(f.processes) + tdn(num(f.value, 3)) + tdn(num(f.per_second)) +
      tdn(num(f.p50, 4)) + tdn(num(f.p99, 4)) + tdn(num(f.mean, 4)) + td(esc(f.help), "help") + "</tr>"), "No serving metrics scraped (see --scrape).");
}

function render(st) {
  window.loomState = st;
  $("meta").textContent = `${st.discovery} discovery · ${st.nats.url || "no NATS"} · updated ${new Date(st.time).toLocaleTimeString()}`;
  for (const f of [tiles, charts, buildsNote, topology, servingView, eventsView, queues, nats, processes]) {
    try { f(st); } catch (e) { console.error(f.name, e); }
  }
  document.body.dataset.updated = st.time;
}

function connect() {
  const es = new EventSource("api/stream");
  es.addEventListener("state", (m) => {
    $("conn").textContent = "live";
    $("conn").className = "pill live";
    render(JSON.parse(m.data));
  });
  es.onerror = () => {
    $("conn").textContent = "reconnecting";
    $("conn").className = "pill off";
  };
}

connect();
