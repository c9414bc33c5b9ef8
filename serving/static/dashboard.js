"use strict";
// Everything that comes from data (symbols, versions, reasons) reaches the page as text:
// DOM nodes and textContent, never HTML strings. The page's Content-Security-Policy allows
// only this file as script.
const W = 600, H = 220, PAD = 40;
const SVG = "http://www.w3.org/2000/svg";
const fmt = (v, d = 5) => (v === null || v === undefined) ? "-" : Number(v).toFixed(d);
const hhmm = (t) => new Date(t * 1000).toISOString().slice(11, 16);

function el(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = String(text);
  return node;
}

function draw(svg, series, marks, yLabel) {
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const nodes = [];
  const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && isFinite(p[1])));
  nodes.push(el("text", { class: "axis", x: W / 2, y: H - 4, "text-anchor": "middle" },
    "event time (UTC)"));
  nodes.push(el("text", { class: "axis", x: 2, y: 12 }, yLabel));
  if (all.length < 2) {
    nodes.push(el("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" },
      "waiting for data"));
    svg.replaceChildren(...nodes);
    return;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 1e-9; y1 += 1e-9; }
  const sx = (x) => PAD + (x - x0) / (x1 - x0) * (W - 2 * PAD);
  const sy = (y) => H - PAD + (y0 - y) / (y1 - y0) * (H - 2 * PAD);
  nodes.push(el("line", { x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, stroke: "#ccc" }));
  nodes.push(el("text", { class: "axis", x: PAD, y: H - PAD + 14 }, hhmm(x0)));
  nodes.push(el("text", { class: "axis", x: W - PAD, y: H - PAD + 14, "text-anchor": "end" },
    hhmm(x1)));
  nodes.push(el("text", { class: "axis", x: 2, y: PAD }, y1.toPrecision(4)));
  nodes.push(el("text", { class: "axis", x: 2, y: H - PAD }, y0.toPrecision(4)));
  for (const [t, version] of marks || []) {
    if (t < x0 || t > x1) continue;
    nodes.push(el("line", { class: "mark", x1: sx(t), x2: sx(t), y1: PAD, y2: H - PAD,
      stroke: "#999", "stroke-dasharray": "3,3" }));
    nodes.push(el("text", { class: "axis", x: sx(t) + 3, y: PAD + 10 }, `v${version}`));
  }
  for (const s of series) {
    // partitions arrive interleaved: draw in event-time order
    const pts = s.points.filter((p) => p[1] !== null && isFinite(p[1])).sort((a, b) => a[0] - b[0])
      .map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    nodes.push(el("polyline", { class: "series", "data-name": s.name, fill: "none",
      stroke: s.color, "stroke-width": 1.5, points: pts }));
  }
  svg.replaceChildren(...nodes);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = String(cell);
    tr.append(td);
  }
  return tr;
}

function item(text, cls) {
  const li = document.createElement("li");
  li.className = cls;
  li.textContent = text;
  return li;
}

const params = new URLSearchParams(location.search);
let page = 0;

function render(state) {
  // the picker searches every symbol (a datalist); the page draws the one the monitor sent
  const list = document.getElementById("symbols");
  if (list.options.length !== state.symbols.length) {
    list.replaceChildren(...state.symbols.map((s) => new Option(s, s)));
  }
  const input = document.getElementById("symbol");
  if (document.activeElement !== input) input.value = state.symbol ?? "";
  const symbol = state.symbol;
  document.getElementById("page").textContent = `${state.errors_page + 1}/${state.errors_pages}`;
  page = Math.min(page, state.errors_pages - 1);
  const changes = state.champion_changes;
  draw(document.getElementById("chart-price"),
       [{ name: "close", color: "#1f77b4", points: state.price[symbol] || [] }], changes,
       "price (close)");
  const pairs = state.pairs[symbol] || [];
  draw(document.getElementById("chart-pairs"), [
    { name: "predicted", color: "#d62728", points: pairs.map((p) => [p[0], p[1]]) },
    { name: "actual", color: "#2ca02c", points: pairs.map((p) => [p[0], p[2]]) },
  ], changes, "return over the horizon");
  draw(document.getElementById("chart-mae"), [
    { name: "model", color: "#9467bd", points: state.mae.map((p) => [p[0], p[2]]) },
    { name: "baseline", color: "#7f7f7f", points: state.mae.map((p) => [p[0], p[3]]) },
  ], changes, "rolling MAE (return)");
  draw(document.getElementById("chart-staleness"),
       [{ name: "staleness", color: "#ff7f0e", points: state.staleness }], changes,
       "staleness (s)");

  const last = state.mae.length ? state.mae[state.mae.length - 1] : null;
  document.getElementById("champion").textContent = state.champion_model === "baseline"
    ? "baseline (naive: no version has beaten it yet)" : (state.champion ?? "-");
  document.getElementById("joined").textContent = state.counts.joined;
  document.getElementById("pending").textContent = state.counts.pending;
  document.getElementById("mae").textContent = last ? fmt(last[2]) : "-";
  document.getElementById("baseline").textContent = last ? fmt(last[3]) : "-";
  document.getElementById("alerts").textContent = state.alerts.length;
  const decision = state.decision;
  document.getElementById("decision").textContent = decision
    ? `${decision.action}${decision.version ? ` of v${decision.version}` : ""} by ${decision.by}` +
      ` at ${hhmm(decision.at)} UTC` +
      (decision.pinned ? " (pinned)" : "")
    : "";
  const age = state.last_record_at === null ? null : state.now - state.last_record_at;
  document.getElementById("age").textContent = age === null ? "-" : `${age.toFixed(1)} s ago`;
  document.getElementById("stale").classList.toggle("old", age !== null && age > 30);
  document.querySelector("#errors tbody").replaceChildren(...state.errors.map((r) => row([
    r.model === "baseline" ? "baseline" : r.model ? `${r.model} v${r.version}` : r.version, r.symbol === "*" ? "all" : r.symbol, r.n,
    fmt(r.rolling_mae), fmt(r.baseline_mae),
  ])));
  const alerts = state.alerts.slice(-10).reverse().map((a) => item(
    `${hhmm(a.ts)} v${a.version} ${a.symbol}: rolling MAE ${fmt(a.rolling_mae)}`, "alert"));
  document.getElementById("alert-list").replaceChildren(
    ...(alerts.length ? alerts : [item("No drift alerts yet", "none")]));
  document.body.dataset.updated = String(state.now);
}

async function refresh() {
  try {
    const token = params.get("token");
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const query = new URLSearchParams({ page: String(page) });
    if (params.get("symbol")) query.set("symbol", params.get("symbol"));
    const response = await fetch(`api/state?${query}`, { headers });
    if (response.ok) render(await response.json());
  } catch (err) {
    console.error("monitor unreachable", err);
  }
}
if (params.get("token")) {  // a search keeps the token the page was opened with
  const hidden = document.getElementById("token");
  hidden.value = params.get("token");
  hidden.disabled = false;
}
document.getElementById("prev").addEventListener("click", () => { page = Math.max(0, page - 1); refresh(); });
document.getElementById("next").addEventListener("click", () => { page += 1; refresh(); });
refresh();
setInterval(refresh, 2000);
