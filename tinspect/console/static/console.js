// tinspect console: the flow list, fed live by server-sent events from /events, and one flow's detail.
// Plain JavaScript, no build step, no library: served from the package as it is.
"use strict";

const rows = new Map();      // record id -> {record, tr}
let capacity = 2000;         // the server's ring size (sent first on the stream): the page keeps no more
let selected = null;

const $ = (id) => document.getElementById(id);
const tbody = document.querySelector("#flows tbody");
const form = $("filters");

const PROTOCOLS = {"http/1.1": "HTTP/1.1", "http/1.0": "HTTP/1.0", h2: "h2", websocket: "WebSocket", tcp: "TCP",
                   udp: "UDP", quic: "QUIC"};
const VERDICTS = {blocked: ["blocked", "a tap blocked it"], local: ["local", "answered locally by a tap"],
                  cached: ["cached", "served from the cache"], passthrough: ["passed through", "TLS relayed untouched"]};

function filters() {
  const f = {};
  for (const name of ["host", "client", "status", "text"]) f[name] = form.elements[name].value.trim();
  return f;
}

// The same rules as tinspect/console/ring.py `matches`, so the HAR download selects what is shown.
function matches(r, f) {
  if (f.host && !String(r.host || "").toLowerCase().includes(f.host.toLowerCase())) return false;
  if (f.client && !String(r.client || "").startsWith(f.client)) return false;
  if (f.status) {
    const code = r.status == null ? "" : String(r.status);
    if (f.status.toLowerCase().endsWith("xx")) { if (code.slice(0, 1) !== f.status.slice(0, 1)) return false; }
    else if (code !== f.status) return false;
  }
  if (f.text) {
    const hay = ["method", "url", "host", "protocol", "verdict", "error"].map((k) => r[k] == null ? "" : String(r[k]))
      .join(" ").toLowerCase();
    if (!hay.includes(f.text.toLowerCase())) return false;
  }
  return true;
}

function clock(t) {
  const d = new Date(t * 1000);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function bytes(n) {
  if (n == null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function ms(seconds) {
  if (seconds == null) return "";
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

function cell(tr, cls, text, title) {
  const td = document.createElement("td");
  td.className = cls;
  td.textContent = text == null ? "" : text;
  if (title) td.title = title;
  tr.appendChild(td);
}

function fill(tr, r) {
  tr.textContent = "";
  const [verdict, why] = VERDICTS[r.verdict] || ["proxied", "passed to the server as is"];
  cell(tr, "col-time", clock(r.time));
  cell(tr, "col-client", r.client);
  cell(tr, "col-protocol", PROTOCOLS[r.protocol] || r.protocol);
  cell(tr, "col-method", r.method || "");
  cell(tr, "col-url", r.url, r.url);
  cell(tr, "col-status", r.status == null ? (r.done ? "" : "…") : r.status);
  cell(tr, "col-size", bytes(r.size));
  cell(tr, "col-duration", ms(r.duration));
  cell(tr, "col-verdict", verdict, why);
  cell(tr, "col-error", r.error || "", r.error || "");
  tr.dataset.verdict = r.verdict || "proxied";
  tr.classList.toggle("error", Boolean(r.error) || (r.status >= 500));
  tr.classList.toggle("pending", !r.done);
}

function show(entry, f) {
  entry.tr.hidden = !matches(entry.record, f);
}

function counts() {
  let shown = 0;
  for (const e of rows.values()) if (!e.tr.hidden) shown++;
  $("count").textContent = `${shown} shown of ${rows.size}`;
  $("empty").hidden = rows.size > 0;
  const f = filters();
  const q = new URLSearchParams(Object.entries(f).filter(([, v]) => v));
  $("har").href = "api/har" + (q.toString() ? "?" + q : "");
}

function received(r) {
  let entry = rows.get(r.id);
  if (entry) {
    entry.record = r;
  } else {
    const tr = document.createElement("tr");
    tr.dataset.id = r.id;
    tr.addEventListener("click", () => open(r.id));
    entry = {record: r, tr};
    rows.set(r.id, entry);
    tbody.insertBefore(tr, tbody.firstChild);  // newest on top
    while (rows.size > capacity) {
      const [oldest, old] = rows.entries().next().value;
      old.tr.remove();
      rows.delete(oldest);
    }
  }
  fill(entry.tr, r);
  show(entry, filters());
  if (selected === r.id && r.done) open(r.id);
}

let pending = null;  // coalesces the count updates of a burst of events into one per frame
function changed() {
  if (pending == null) pending = requestAnimationFrame(() => { pending = null; counts(); });
}

function refilter() {
  const f = filters();
  for (const e of rows.values()) show(e, f);
  counts();
}

function connect() {
  const source = new EventSource("events");
  source.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "up"; });
  source.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").className = "down"; });
  source.addEventListener("config", (ev) => { capacity = JSON.parse(ev.data).capacity; });
  source.addEventListener("message", (ev) => { received(JSON.parse(ev.data)); changed(); });
}

// -- detail ---------------------------------------------------------------------------------------------

function pairs(dl, items) {
  dl.textContent = "";
  for (const [k, v] of items) {
    if (v == null || v === "") continue;
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
}

function headers(table, head) {
  table.textContent = "";
  for (const [name, value] of (head && head.headers) || []) {
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = name;
    const td = document.createElement("td");
    td.textContent = value;
    tr.append(th, td);
  }
  if (head && head.headers_cut) {
    const tr = table.insertRow();
    tr.insertCell().textContent = `… ${head.headers_cut} more fields not kept`;
  }
}

function body(pre, b) {
  if (!b || !b.size) { pre.hidden = true; return; }
  pre.hidden = false;
  let text = "text" in b ? b.text : "base64" in b ? `(binary, base64) ${b.base64}` : "(not kept: --console-body 0)";
  if (b.truncated) text += `\n… (${bytes(b.size)} in all; the console keeps the first part)`;
  pre.textContent = text;
}

function span(a, b) {
  return a != null && b != null && b >= a ? ms(b - a) : null;
}

async function open(id) {
  selected = id;
  const response = await fetch(`api/flows/${encodeURIComponent(id)}`);
  if (!response.ok) { $("detail-title").textContent = "this flow is no longer kept"; return; }
  const r = await response.json();
  if (selected !== id) return;
  const d = r.detail || {};
  for (const tr of tbody.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  const entry = rows.get(id);
  if (entry) entry.tr.classList.add("selected");
  $("detail").hidden = false;
  $("detail-title").textContent = `${r.method || PROTOCOLS[r.protocol] || r.protocol} ${r.url}`;
  $("curl").hidden = !r.curl;
  $("curl-text").textContent = r.curl || "";
  $("curl-text").hidden = !r.curl;
  $("copied").textContent = "";
  const [verdict, why] = VERDICTS[r.verdict] || ["proxied", "passed to the server as is"];
  pairs($("summary"), [["flow", r.flow], ["client", r.client], ["server", d.server && d.server.join(" port ")],
    ["protocol", PROTOCOLS[r.protocol] || r.protocol], ["status", r.status], ["size", bytes(r.size)],
    ["verdict", `${verdict} (${why})`], ["error", r.error], ["messages", r.messages]]);
  const c = d.connection || {}, t = d.timings || {};
  pairs($("timings"), [["connect", span(c.accepted, c.upstream_connected)],
    ["TLS (upstream)", span(c.upstream_connected, c.upstream_tls_done)],
    ["TLS (client)", span(c.accepted, c.client_tls_done)],
    ["first byte", span(t.start, t.response_start)], ["total", span(t.start, t.end) || ms(r.duration)]]);
  const tls = d.tls;
  $("tls-section").hidden = !tls;
  if (tls) {
    const cert = tls.upstream_cert || {};
    pairs($("tls"), [["SNI", tls.sni], ["ALPN", tls.alpn], ["version", tls.version], ["certificate subject", cert.subject],
      ["certificate issuer", cert.issuer], ["valid until", cert.not_after]]);
  }
  const req = d.request, resp = d.response;
  $("request-section").hidden = !req;
  if (req) {
    $("req-line").textContent = `${req.method} ${req.url} ${req.version}`;
    headers($("req-headers"), req);
    body($("req-body"), req.body);
  }
  $("response-section").hidden = !resp;
  if (resp) {
    $("resp-line").textContent = `${resp.version} ${resp.status} ${resp.reason || ""}`;
    headers($("resp-headers"), resp);
    body($("resp-body"), resp.body);
  }
  const ws = d.websocket || [];
  $("ws-section").hidden = ws.length === 0;
  const ol = $("ws");
  ol.textContent = "";
  if (d.websocket_dropped) ol.append(Object.assign(document.createElement("li"),
    {textContent: `… ${d.websocket_dropped} earlier messages not kept`}));
  for (const m of ws) {
    const li = document.createElement("li");
    li.className = m.direction === "to_server" ? "up" : "down";
    const what = "text" in m ? m.text : `(binary, base64) ${m.base64 || ""}`;
    li.textContent = `${clock(m.time)} ${m.direction === "to_server" ? "→" : "←"} ${bytes(m.size)} ${what}`;
    ol.append(li);
  }
}

async function copyCurl() {
  const text = $("curl-text").textContent;
  try {
    await navigator.clipboard.writeText(text);  // a secure context: https, or http on loopback
  } catch (e) {
    const area = Object.assign(document.createElement("textarea"), {value: text});
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  $("copied").textContent = "copied";
}

form.addEventListener("input", refilter);
form.addEventListener("reset", () => setTimeout(refilter));
$("close").addEventListener("click", () => { $("detail").hidden = true; selected = null; });
$("curl").addEventListener("click", copyCurl);
counts();
connect();
