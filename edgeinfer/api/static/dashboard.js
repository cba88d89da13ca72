// edgeinfer live dashboard: polls /v1/dashboard/state every second; plain JS + SVG, no dependencies.
"use strict";

const STATE_URL = "/v1/dashboard/state";
const KEY_STORE = "edgeinfer.apiKey";
const POLL_MS = 1000;
const HISTORY = 120; // tok/s points kept for the sparkline
const COLORS = ["#2b6cb0", "#2f855a", "#b7791f", "#805ad5", "#c53030", "#2c7a7b", "#d53f8c", "#4a5568"];
const SVG_NS = "http://www.w3.org/2000/svg";

const history = [];
let waitingForKey = false;

const $ = (id) => document.getElementById(id);

function fmt(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return x.toFixed(digits);
}
function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const v = seconds * 1000;
  return v >= 100 ? v.toFixed(0) + " ms" : v.toFixed(1) + " ms";
}
function msv(v) {
  return v === null || v === undefined ? "–" : (v >= 100 ? v.toFixed(0) : v.toFixed(2)) + " ms";
}
function bytes(b) {
  if (b === null || b === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(b >= 100 ? 0 : 1) : b.toFixed(0)) + " " + units[i];
}
function duration(s) {
  if (s < 60) return s.toFixed(0) + " s";
  if (s < 3600) return (s / 60).toFixed(0) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function setText(id, text) {
  const el = $(id);
  if (el && el.textContent !== String(text)) el.textContent = text;
}
function el(tag, attrs = {}, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// --- polling and the API key ---------------------------------------------------------------------------
async function poll() {
  if (waitingForKey) return;
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = "Bearer " + key;
  try {
    const r = await fetch(STATE_URL, { headers, cache: "no-store" });
    if (r.status === 401) {
      askForKey(key ? "that key was refused" : "");
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    setText("conn", "live · " + new Date().toLocaleTimeString());
    $("conn").className = "muted";
  } catch (err) {
    setText("conn", "no answer from the server (" + err.message + ")");
    $("conn").className = "bad";
  }
}

function askForKey(error) {
  waitingForKey = true;
  $("keyform").hidden = false;
  $("main").hidden = true;
  setText("keyerror", error);
  setText("conn", "API key needed");
  $("key").focus();
}

$("keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("key").value = "";
  $("keyform").hidden = true;
  $("main").hidden = false;
  waitingForKey = false;
  poll();
});

// --- rendering -----------------------------------------------------------------------------------------
function render(s) {
  document.body.dataset.ready = "1";
  setText("kind", s.gateway ? "gateway" : "server");
  const models = $("models");
  models.replaceChildren(
    ...s.models.map((m) => {
      const span = el("span", { class: "model", "data-model": m.name }, m.name);
      span.appendChild(el("span", { class: "state " + m.state }, m.state));
      if (m.backend) span.appendChild(el("span", { class: "muted" }, " " + m.backend));
      if (m.error) span.title = m.error;
      return span;
    })
  );
  document.title = "edgeinfer · " + s.models.map((m) => m.name).join(", ");

  const t = s.traffic;
  setText("tps", fmt(t.tokens_per_second));
  setText("tps-window", t.window_seconds ? "last " + t.window_seconds.toFixed(0) + " s" : "");
  setText("running", s.models.reduce((a, m) => a + m.running, 0));
  setText("waiting", s.models.reduce((a, m) => a + m.waiting, 0));
  setText("queue-cap", "queue holds " + s.models.reduce((a, m) => a + m.max_queue, 0) +
    " · up " + duration(s.uptime_seconds));
  setText("requests", t.requests);
  setText("errors", t.errors);
  setText("rps", fmt(t.requests_per_second, 2) + " req/s");
  setText("gen-tokens", t.generation_tokens);
  setText("prompt-tokens", t.prompt_tokens);
  setText("generations", t.generations);

  history.push(t.tokens_per_second || 0);
  if (history.length > HISTORY) history.shift();
  drawSpark();

  setText("lat-window", s.latency_window_seconds >= 1
    ? "(last " + duration(s.latency_window_seconds) + ", from the Prometheus histograms)" : "");
  for (const name of ["ttft", "tpot", "e2e", "queue_time"]) {
    const p = s[name];
    const cells = document.querySelectorAll(`#latency tr[data-metric="${name}"] td`);
    const values = [ms(p.p50), ms(p.p90), ms(p.p99), p.count];
    cells.forEach((c, i) => { if (c.textContent !== String(values[i])) c.textContent = values[i]; });
  }

  const topo = s.topology;
  $("topology").hidden = !topo;
  if (topo) renderTopology(topo);
}

function drawSpark() {
  const c = $("spark");
  const w = (c.width = c.clientWidth || 480), h = c.height;
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...history);
  g.strokeStyle = "#2b6cb0";
  g.fillStyle = "rgba(43,108,176,.12)";
  g.lineWidth = 2;
  g.beginPath();
  const step = w / (HISTORY - 1);
  const x0 = w - (history.length - 1) * step;
  history.forEach((v, i) => {
    const x = x0 + i * step, y = h - 3 - (v / max) * (h - 8);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
  g.lineTo(w, h);
  g.lineTo(x0, h);
  g.closePath();
  g.fill();
  g.fillStyle = "#6b7480";
  g.font = "10px sans-serif";
  g.fillText("max " + max.toFixed(1), 4, 11);
}

function short(text, max = 58) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

function nodeState(n) {
  if (n.up === false) return "down";
  if (n.layers) return n.up === true ? "up" : "unknown";
  if (n.standby_for) return "standby";
  return "unused";
}

function renderTopology(topo) {
  const nodes = topo.nodes;
  const colors = {};
  nodes.forEach((n, i) => { colors[n.name] = COLORS[i % COLORS.length]; });
  const down = nodes.filter((n) => n.up === false).length;
  setText("cluster-summary", `${topo.model}, ${topo.n_layers} layers, ${topo.strategy} (${topo.objective}), ` +
    `planned ${fmt(topo.predicted_tokens_per_second)} tok/s · ${nodes.length - down}/${nodes.length} nodes up · ` +
    `failovers ${topo.failovers}` + (topo.replans ? `, re-plans ${topo.replans}` : "") +
    (topo.migrations ? `, migrations ${topo.migrations}` : ""));
  const alert = $("cluster-alert");
  const msg = !topo.available ? "The gateway cannot serve: " + (topo.reason || "not enough nodes")
    : (topo.last_recovery ? "Last recovery: " + topo.last_recovery : "");
  alert.hidden = !msg;
  alert.className = topo.available ? "note" : "alert";
  alert.textContent = msg;

  // star topology: the gateway on the left, one box per node on the right
  const svg = $("topo");
  const rowH = 64, top = 14, width = 900;
  const height = Math.max(110, top * 2 + nodes.length * rowH);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", height);
  svg.replaceChildren();
  const gw = { x: 20, y: height / 2 - 28, w: 170, h: 56 };
  nodes.forEach((n, i) => {
    const st = nodeState(n);
    const y = top + i * rowH;
    const nx = 350;
    const line = el("svg:line", {
      class: "link " + st, x1: gw.x + gw.w, y1: gw.y + gw.h / 2, x2: nx, y2: y + 25,
    });
    svg.appendChild(line);
    const label = n.local ? "in process" :
      `${msv(n.hop_ms)} · ${n.mbit_per_s ? fmt(n.mbit_per_s, 0) + " Mbit/s" : "–"}`;
    svg.appendChild(el("svg:text", { x: nx - 8, y: y + 17, class: "muted", "text-anchor": "end" }, label));
    const g = el("svg:g", { "data-node": n.name, "data-state": st });
    g.appendChild(el("svg:rect", { class: "box " + st, x: nx, y: y, width: 530, height: 50 }));
    g.appendChild(el("svg:rect", { x: nx, y: y, width: 8, height: 50, fill: colors[n.name] }));
    g.appendChild(el("svg:text", { x: nx + 18, y: y + 20, class: "title" }, `${n.name}  ${st.toUpperCase()}`));
    const layers = n.layers ? `layers ${n.layers[0]}–${n.layers[1]}${n.head ? " + head" : ""}` :
      n.standby_for ? `standby for layers ${n.standby_for[0]}–${n.standby_for[1]}` : short(n.excluded || "not in the plan");
    g.appendChild(el("svg:text", { x: nx + 150, y: y + 20 }, layers));
    const detail = `${n.address || (n.local ? "gateway device" : "")}` +
      ` · step ${msv(n.step_ms)} · call ${msv(n.rpc_ms)}` +
      ` · mem ${bytes(n.weight_bytes)} of ${bytes(n.memory_bytes)}` +
      (n.load1 !== null && n.load1 !== undefined ? ` · load ${fmt(n.load1, 2)}` : "");
    g.appendChild(el("svg:text", { x: nx + 18, y: y + 40, class: "muted" }, detail));
    const why = st === "down" ? n.last_error : n.excluded;
    if (why) g.appendChild(el("svg:title", {}, why));
    svg.appendChild(g);
  });
  const gwg = el("svg:g", {});
  gwg.appendChild(el("svg:rect", { class: "box gw", x: gw.x, y: gw.y, width: gw.w, height: gw.h }));
  gwg.appendChild(el("svg:text", { x: gw.x + 12, y: gw.y + 22, class: "title" }, "gateway"));
  gwg.appendChild(el("svg:text", { x: gw.x + 12, y: gw.y + 41, class: "muted" },
    "tokenizer · sampling"));
  svg.appendChild(gwg);

  // layer map: which node holds which layers
  const map = $("layermap");
  map.replaceChildren();
  nodes.filter((n) => n.layers).sort((a, b) => a.layers[0] - b.layers[0]).forEach((n) => {
    const span = n.layers[1] - n.layers[0] + 1;
    const d = el("div", { "data-node": n.name, title: `${n.name}: layers ${n.layers[0]}–${n.layers[1]}` },
      `${n.name} ${n.layers[0]}–${n.layers[1]}`);
    d.style.flex = String(span);
    d.style.background = n.up === false ? "#d93025" : colors[n.name];
    map.appendChild(d);
  });

  const body = document.querySelector("#nodes tbody");
  body.replaceChildren(
    ...nodes.map((n) => {
      const st = nodeState(n);
      const tr = el("tr", { "data-node": n.name, "data-state": st });
      const layers = n.layers ? `${n.layers[0]}–${n.layers[1]}${n.head ? " +head" : ""}` :
        n.standby_for ? `standby ${n.standby_for[0]}–${n.standby_for[1]}` : "–";
      const cells = [
        n.name, null, n.address || (n.local ? "local" : "–"), layers,
        msv(n.step_ms) + (n.steps ? ` (${n.steps})` : ""), msv(n.rpc_ms), msv(n.predicted_ms),
        n.local ? "–" : msv(n.hop_ms), n.mbit_per_s ? fmt(n.mbit_per_s, 0) + " Mbit/s" : "–",
        `${bytes(n.weight_bytes)} / ${bytes(n.free_bytes ?? n.memory_bytes)}`,
        n.load1 !== null && n.load1 !== undefined ? fmt(n.load1, 2) : "–",
      ];
      cells.forEach((c, i) => {
        const td = el("td");
        if (i === 1) td.appendChild(el("span", { class: "state " + st }, st));
        else td.textContent = c;
        tr.appendChild(td);
      });
      if (n.excluded) tr.title = n.excluded;
      return tr;
    })
  );
}

poll();
setInterval(poll, POLL_MS);
