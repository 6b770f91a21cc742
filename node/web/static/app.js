"use strict";
// The dashboard: filled from the JSON API, then kept live by /api/events/stream (SSE).
// Every value from the box goes through textContent, never innerHTML.

const $ = (id) => document.getElementById(id);
const SECTIONS = ["status", "earnings", "storage", "network", "hardware"];
const KINDS = ["storage", "egress", "relay"];
const COLORS = { storage: "#2b8a7e", egress: "#e0a030", relay: "#6a5acd" };
const MAX_EVENTS = 50;
const TOKEN_KEY = "bitchat-admin-token";

const state = { currency: "", chart: null, chartDays: "", events: new Map(), token: null, pending: null, last: {}, connected: false, traffic: null };

// -- formatting ----------------------------------------------------------------------

function fmtBytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let v = n, i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${i ? v.toFixed(v < 10 ? 2 : 1) : Math.round(v)} ${units[i]}`;
}

function fmtMoney(v) {
  return typeof v === "number" ? `${v.toFixed(4)} ${state.currency}`.trim() : "–";
}

function fmtDuration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  return `${m} min ${s % 60} s`;
}

function fmtTime(ts) {
  return typeof ts === "number" ? new Date(ts * 1000).toLocaleString() : "–";
}

function text(v) {
  if (v === null || v === undefined || v === "") return "–";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k}: ${text(x)}`).join(", ") || "–";
  return String(v);
}

// Sets an element's text and keeps the raw number in data-value (the tests compare it).
function put(id, value, shown) {
  const el = $(id);
  if (!el) return;
  el.textContent = shown === undefined ? text(value) : shown;
  if (typeof value === "number" || typeof value === "boolean") el.dataset.value = String(value);
  else delete el.dataset.value;
}

function el(tag, cls, content) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (content !== undefined) e.textContent = content;
  return e;
}

function row(cells, span) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(el("td", "", c));
  if (span) tr.firstChild.colSpan = span;
  return tr;
}

// Shows a card's figures, or the reason they are missing.
function card(id, doc) {
  const c = $(id);
  const ok = doc && doc.available !== false;
  c.classList.toggle("unavailable", !ok);
  const reason = c.querySelector(".reason");
  const body = c.querySelector(".body");
  reason.hidden = ok;
  body.hidden = !ok;
  if (!ok) reason.textContent = `Not available: ${doc ? doc.reason : "no data"}`;
  return ok;
}

// -- sections ------------------------------------------------------------------------

const render = {
  status(st) {
    $("name").textContent = st.name || "";
    put("status-node-id", st.node_id);
    put("status-version", st.version);
    put("status-uptime", st.uptime_s, fmtDuration(st.uptime_s || 0));
    const up = st.update || {};
    put("status-update", up.available === false ? `not tracked here: ${up.reason}` : text(up));
    const lim = st.limits || {};
    const active = Object.entries(lim).filter(([k, v]) => k !== "reasons" && v);
    put("status-limits", active.length ? `${active.map(([k, v]) => (v === true ? k : `${k} ${v}`)).join(", ")} (${(lim.reasons || []).join(", ")})` : "none");
    const web = (st.services || {}).web || {};
    put("status-mdns", web.mdns);
    const rel = (st.services || {}).relays;
    put("status-relays", rel ? rel.online : undefined,
      rel ? `${rel.online} of ${rel.enrolled} online${rel.error ? ` (${rel.error})` : ""}` : "no relay service");
    const err = $("error");
    err.hidden = !st.error;
    if (st.error) err.textContent = st.error;
  },

  earnings(e) {
    if (!card("card-earnings", e)) return;
    state.currency = e.currency || "";
    put("earn-today", e.today, fmtMoney(e.today));
    put("earn-month", e.month, fmtMoney(e.month));
    put("earn-all", e.all_time, fmtMoney(e.all_time));
    put("earn-channels", e.channels);
    drawChart(Array.isArray(e.by_day) ? e.by_day : []);
  },

  storage(s) {
    const ok = card("card-storage", s);
    card("card-scores", s);
    card("card-contracts", s);
    const deg = $("degraded");
    deg.hidden = !(ok && s.degraded);
    if (ok && s.degraded) deg.textContent = `Storage is degraded: ${s.degraded_reason || "no reason given"}`;
    if (!ok) return;
    put("storage-used", s.used_bytes, fmtBytes(s.used_bytes));
    put("storage-allocated", s.allocated_bytes, fmtBytes(s.allocated_bytes));
    put("storage-free", s.free_bytes, fmtBytes(s.free_bytes));
    put("storage-chunks", s.chunks);
    if (typeof s.allocated_bytes === "number") $("allocation-gb").placeholder = (s.allocated_bytes / 1e9).toFixed(1);
    const bw = s.bandwidth || {};
    put("storage-ingress", bw.ingress_bytes, fmtBytes(bw.ingress_bytes));
    put("storage-egress", bw.egress_bytes, fmtBytes(bw.egress_bytes));
    const bar = $("storage-bar");
    bar.max = Math.max(1, s.allocated_bytes || 0);
    bar.value = Math.min(bar.max, s.used_bytes || 0);
    const scores = s.scores || {};
    const th = scores.thresholds || {};
    for (const k of ["audit", "online", "suspension"]) {
      const m = $(`score-${k}`);
      const v = scores[k];
      if (typeof v === "number") { m.value = v; m.dataset.value = String(v); }
      if (typeof th[k] === "number") { m.low = th[k]; m.dataset.threshold = String(th[k]); }
      const below = typeof v === "number" && typeof th[k] === "number" && v < th[k];
      const t = $(`score-${k}-text`);
      t.textContent = `${typeof v === "number" ? (v * 100).toFixed(1) + " %" : "–"} ▲ ${typeof th[k] === "number" ? (th[k] * 100).toFixed(0) + " %" : "–"}`;
      t.classList.toggle("bad", below);
    }
    const contracts = Array.isArray(s.contracts) ? s.contracts : [];
    const total = typeof s.contracts_total === "number" ? s.contracts_total : contracts.length;
    const states = Object.entries(s.contracts_by_state || {}).map(([k, v]) => `${v} ${k}`).join(", ");
    put("contracts-count", total, `(${total}${states ? `: ${states}` : ""})`);
    const rows = $("contracts-rows");
    rows.replaceChildren(...contracts.slice(0, 20).map((c) => row([
      String(c.id || "").slice(0, 12), String(c.client || "").slice(0, 12), fmtBytes(c.size),
      fmtMoney(c.price), fmtTime(c.end), text(c.state)])));
    if (total > 20) rows.appendChild(row([`… and ${total - 20} more (newest shown)`], 6));
    if (!contracts.length) rows.appendChild(row(["no contracts yet"], 6));
  },

  network(n) {
    if (!card("card-network", n)) return;
    const peers = Array.isArray(n.peers) ? n.peers : [];
    const count = (p) => peers.filter((x) => x.path === p).length;
    const nat = n.nat || {};
    const paths = { direct: count("direct"), "port-mapped": count("port-mapped"), relayed: count("relayed") };
    const reach = nat.public_address
      ? (nat.port_mapping ? "reachable from outside (port-mapped)" : "public address known")
      : paths.relayed && !paths.direct && !paths["port-mapped"] ? "only through relays"
      : peers.length ? "peers reached; public address not yet known" : "no peers yet";
    put("net-reach", reach);
    put("net-nat", nat.class);
    put("net-public", nat.public_address);
    put("net-mapping", nat.port_mapping);
    put("net-listen", n.listen);
    put("net-sessions", n.sessions);
    put("net-direct", paths.direct);
    put("net-mapped", paths["port-mapped"]);
    put("net-relayed", paths.relayed);
    put("net-in", n.bytes_in, fmtBytes(n.bytes_in));
    put("net-out", n.bytes_out, fmtBytes(n.bytes_out));
    // Rates from two successive live updates.
    const now = performance.now() / 1000;
    const prev = state.traffic;
    if (prev && now > prev.t && n.bytes_in >= prev.i && n.bytes_out >= prev.o) {
      const dt = now - prev.t;
      put("net-rate", null, `↓ ${fmtBytes((n.bytes_in - prev.i) / dt)}/s · ↑ ${fmtBytes((n.bytes_out - prev.o) / dt)}/s`);
    }
    state.traffic = { t: now, i: n.bytes_in, o: n.bytes_out };
    $("peer-rows").replaceChildren(...peers.slice(0, 50).map((p) => row([
      String(p.node_id || "").slice(0, 12), text(p.address), text(p.path),
      typeof p.rtt_ms === "number" ? `${p.rtt_ms.toFixed(1)} ms` : "–"])));
  },

  hardware(h) {
    if (!card("card-hardware", h)) return;
    put("hw-temp", h.cpu_temp_c, typeof h.cpu_temp_c === "number" ? `${h.cpu_temp_c.toFixed(1)} °C` : "no sensor");
    put("hw-thermal", h.thermal_level);
    put("hw-thermal-reason", h.thermal_reason);
    const thr = h.throttled || {};
    const now = thr.now || {};
    const since = thr.since_boot || {};
    const known = thr.available !== false;
    const flags = (o) => (known ? Object.entries(o).filter(([, v]) => v).map(([k]) => k.replace(/_/g, " ")).join(", ") || "none" : "not reported by this board");
    put("hw-throttled", flags(now));
    const uv = now.under_voltage || (h.power || {}).under_voltage_now;
    const uvBoot = since.under_voltage;
    put("hw-undervolt", !known && !uv ? "not reported by this board" : uv ? "now" : uvBoot ? "earlier since boot" : "none");
    $("hw-undervolt").classList.toggle("bad", Boolean(uv || uvBoot));
    put("hw-since-boot", flags(since));
    const fan = h.fan || {};
    put("hw-fan", fan.configured === false ? "none configured" : `${typeof fan.rpm === "number" ? fan.rpm + " rpm" : "no tachometer"}, duty ${typeof fan.duty === "number" ? fan.duty.toFixed(0) + " %" : "–"}`);
    const leds = h.leds || {};
    put("hw-leds", `${text(leds.pattern)}${leds.identify_s_left > 0 ? `, identifying (${Math.ceil(leds.identify_s_left)} s left)` : ""}${Array.isArray(leds.devices) && leds.devices.length ? ` on ${leds.devices.join(", ")}` : ", no LED devices"}`);
    const disks = Array.isArray(h.disks) ? h.disks : [];
    $("hw-disks").replaceChildren(...(disks.length ? disks.map((d) => {
      const li = el("li", d.state && d.state !== "ok" ? "bad" : "", `${text(d.device)} on ${text(d.mountpoint)}: ${text(d.state)}`
        + (typeof d.total_bytes === "number" ? `, ${fmtBytes(d.free_bytes)} free of ${fmtBytes(d.total_bytes)}` : "")
        + (d.smart ? `, SMART ${typeof d.smart === "object" ? text(d.smart.health || d.smart.passed) : text(d.smart)}` : ", SMART not checked")
        + (d.problem ? ` — ${d.problem}` : ""));
      return li;
    }) : [el("li", "", "none reported")]));
    const findings = Array.isArray(h.findings) ? h.findings : [];
    $("hw-findings").replaceChildren(...(findings.length
      ? findings.map((f) => el("li", `lvl-${f.level}`, `${f.message}${f.action ? ` → ${f.action}` : ""}`))
      : [el("li", "", "all checks pass")]));
  },
};

// -- chart ---------------------------------------------------------------------------

function drawChart(days) {
  const key = JSON.stringify(days);
  if (key === state.chartDays) return;
  state.chartDays = key;
  const box = $("earn-chart");
  if (!days.length || typeof uPlot === "undefined") {
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    box.textContent = days.length ? "" : "No earnings recorded yet.";
    box.classList.toggle("empty", !days.length);
    return;
  }
  // Stacked bars: each series is the running sum, drawn tallest first.
  const xs = days.map((d) => Date.parse(`${d.day}T00:00:00Z`) / 1000);
  const stacks = [];
  let acc = days.map(() => 0);
  for (const k of KINDS) { acc = acc.map((a, i) => a + (Number(days[i][k]) || 0)); stacks.push(acc); }
  const data = [xs, ...stacks.slice().reverse()];
  const bars = uPlot.paths.bars({ size: [0.7, 40] });
  const series = [{}, ...KINDS.slice().reverse().map((k) => ({ label: k, fill: COLORS[k], stroke: COLORS[k], paths: bars, points: { show: false } }))];
  const width = Math.max(240, box.clientWidth || 300);
  if (state.chart) { state.chart.destroy(); }
  box.textContent = "";
  box.classList.remove("empty");
  state.chart = new uPlot({
    width, height: 180, series, legend: { show: false }, cursor: { show: false },
    scales: {
      x: { time: true, range: (u, min, max) => [min - 43200, max + 43200] },
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
    },
    axes: [
      { stroke: "#8a949e", grid: { show: false }, space: 44, incrs: [86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400],
        values: (u, splits) => splits.map((s) => new Date(s * 1000).toISOString().slice(5, 10)) },
      { stroke: "#8a949e", size: 56 },
    ],
  }, data, box);
}

function resizeChart() {
  if (state.chart) state.chart.setSize({ width: Math.max(240, $("earn-chart").clientWidth), height: 180 });
}

// -- events --------------------------------------------------------------------------

const ORDER = { error: 0, warning: 1, info: 2 };

function addEvent(e) {
  state.events.set(e.id, e);
  if (state.events.size > MAX_EVENTS * 2) {
    const keep = [...state.events.values()].sort((a, b) => b.id - a.id).slice(0, MAX_EVENTS);
    state.events = new Map(keep.map((x) => [x.id, x]));
  }
}

function renderEvents() {
  const list = [...state.events.values()]
    .sort((a, b) => (ORDER[a.level] - ORDER[b.level]) || (b.id - a.id))
    .slice(0, MAX_EVENTS);
  $("events").replaceChildren(...list.map((e) => {
    const li = el("li", `lvl-${e.level}`);
    li.dataset.id = String(e.id);
    li.appendChild(el("time", "", new Date(e.ts * 1000).toLocaleTimeString()));
    li.appendChild(el("span", "src", e.source));
    li.appendChild(el("span", "msg", e.message));
    return li;
  }));
}

// -- loading and live updates --------------------------------------------------------

async function getJson(path) {
  const res = await fetch(path, { cache: "no-store" });
  const doc = await res.json();
  if (!res.ok) throw new Error(doc.error || `HTTP ${res.status}`);
  return doc;
}

function apply(name, doc) {
  state.last[name] = doc;
  try { render[name](doc); } catch (e) { showError(`cannot show ${name}: ${e.message}`); }
}

function showError(msg) {
  const err = $("error");
  err.textContent = msg;
  err.hidden = false;
}

async function loadEvents(fresh) {
  try {
    const doc = await getJson(`/api/events?limit=${MAX_EVENTS}`);
    if (fresh) state.events.clear();
    for (const e of doc.events) addEvent(e);
    renderEvents();
  } catch (e) { showError(`cannot load events: ${e.message}`); }
}

async function load() {
  const paths = { storage: "/api/storage?contracts=20" };
  const docs = await Promise.all(SECTIONS.map((s) => getJson(paths[s] || `/api/${s}`).catch((e) => ({ available: false, reason: e.message }))));
  SECTIONS.forEach((s, i) => apply(s, docs[i]));
  await loadEvents(false);
  document.body.dataset.loaded = "1";
  performance.mark("dashboard-filled");
}

function connect() {
  const live = $("live");
  const src = new EventSource("/api/events/stream");
  src.onopen = () => {
    live.textContent = "live";
    live.className = "badge on";
    $("error").hidden = true;
    // After a reconnect the agent may have restarted (event ids start again): reload the list.
    if (state.connected) loadEvents(true);
    state.connected = true;
  };
  src.onerror = () => { live.textContent = "reconnecting…"; live.className = "badge off"; };
  for (const s of SECTIONS) {
    src.addEventListener(s, (m) => {
      apply(s, JSON.parse(m.data));
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    });
  }
  src.addEventListener("event", (m) => { addEvent(JSON.parse(m.data)); renderEvents(); });
}

// -- owner actions -------------------------------------------------------------------

function result(msg, bad) {
  const r = $("action-result");
  r.textContent = msg;
  r.classList.toggle("bad", Boolean(bad));
}

function token() {
  return state.token || sessionStorage.getItem(TOKEN_KEY);
}

function askToken(action) {
  state.pending = action;
  $("token-form").hidden = false;
  $("token-input").focus();
}

async function act(path, body) {
  const tok = token();
  if (!tok) { askToken([path, body]); result("Enter the admin token to continue."); return; }
  let res, doc;
  try {
    res = await fetch(`/api/actions/${path}`, {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${tok}` },
      body: JSON.stringify(body || {}),
    });
    doc = await res.json();
  } catch (e) { result(`The agent did not answer: ${e.message}`, true); return; }
  if (res.status === 401) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    askToken([path, body]);
    result(`Refused: ${doc.error}`, true);
    return;
  }
  if (!res.ok) { result(`Refused: ${doc.error}`, true); return; }
  result(doc.message);
  if (doc.token) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    const nt = $("new-token");
    nt.hidden = false;
    nt.textContent = `New admin token (shown once, also in admin.token on the box): ${doc.token}`;
  }
}

function setupActions() {
  $("form-identify").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("identify", { seconds: Number($("identify-seconds").value) });
  });
  $("form-allocation").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("allocation", { bytes: Math.round(Number($("allocation-gb").value) * 1e9) });
  });
  $("btn-pause").addEventListener("click", () => act("pause", { paused: true }));
  $("btn-resume").addEventListener("click", () => act("pause", { paused: false }));
  $("btn-rotate").addEventListener("click", () => act("rotate-token", {}));
  $("btn-shutdown").addEventListener("click", () => {
    if (window.confirm("Stop the agent on this box? It stays stopped until it is started again.")) act("shutdown", {});
  });
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const tok = $("token-input").value.trim();
    if (!tok) return;
    state.token = tok;
    if ($("token-remember").checked) sessionStorage.setItem(TOKEN_KEY, tok);
    $("token-input").value = "";
    $("token-form").hidden = true;
    const pending = state.pending;
    state.pending = null;
    if (pending) act(pending[0], pending[1]);
  });
  $("token-cancel").addEventListener("click", () => {
    $("token-form").hidden = true;
    state.pending = null;
    result("");
  });
}

setupActions();
load().then(connect);
let resizeTimer = 0;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(resizeChart, 150); });
