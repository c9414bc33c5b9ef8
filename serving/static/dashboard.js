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

const PALETTE = ["#9467bd", "#1f77b4", "#2ca02c", "#d62728", "#8c564b", "#e377c2", "#17becf"];

// readable numbers: a few significant digits, seconds as s/min/h/d
function number(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
  return Number(v.toPrecision(3)).toString();
}
function duration(v) {
  const a = Math.abs(v);
  if (a >= 86400) return `${(v / 86400).toPrecision(3)} d`;
  if (a >= 3600) return `${(v / 3600).toPrecision(3)} h`;
  if (a >= 60) return `${(v / 60).toPrecision(3)} min`;
  return `${v.toPrecision(3)} s`;
}
// time ticks at round steps, labelled HH:MM, or the date where the range spans days
function timeTicks(x0, x1) {
  const steps = [60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400];
  const step = steps.find((s) => (x1 - x0) / s <= 6) || steps[steps.length - 1];
  const label = (t) => (x1 - x0 > 2 * 86400
    ? new Date(t * 1000).toISOString().slice(5, 10) : hhmm(t));
  const out = [];
  for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) out.push([t, label(t)]);
  return out;
}
function valueTicks(y0, y1) {
  const raw = (y1 - y0) / 4, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let y = Math.ceil(y0 / step) * step; y <= y1 + step * 1e-9; y += step) out.push(y);
  return out;
}

// one time range for every chart, so the champion markers line up from chart to chart
function timeRange(...groups) {
  const ts = groups.flat().filter((p) => p && p[1] !== null && isFinite(p[1])).map((p) => p[0]);
  if (!ts.length) return null;
  let x0 = Math.min(...ts), x1 = Math.max(...ts);
  if (x1 === x0) x1 = x0 + 60;
  return [x0, x1];
}

function draw(svg, series, marks, yLabel, range, yFormat = number) {
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const nodes = [];
  const inRange = (p) => p[1] !== null && isFinite(p[1]);
  const all = series.flatMap((s) => s.points.filter(inRange));
  nodes.push(el("text", { class: "axis", x: W / 2, y: H - 4, "text-anchor": "middle" },
    "event time (UTC)"));
  nodes.push(el("text", { class: "axis", x: 2, y: 12 }, yLabel));
  if (all.length < 2 || range === null) {
    nodes.push(el("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" },
      "waiting for data"));
    svg.replaceChildren(...nodes);
    return;
  }
  const [x0, x1] = range;
  const ys = all.map((p) => p[1]);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.01 || 1e-9; y1 += Math.abs(y1) * 0.01 || 1e-9; }
  const L = PAD + 14;  // room for the value labels
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - PAD / 2);
  const sy = (y) => H - PAD + (y0 - y) / (y1 - y0) * (H - 2 * PAD);
  nodes.push(el("line", { x1: L, y1: H - PAD, x2: W - PAD / 2, y2: H - PAD, stroke: "#ccc" }));
  for (const [t, text] of timeTicks(x0, x1)) {
    nodes.push(el("line", { class: "tick", x1: sx(t), x2: sx(t), y1: H - PAD, y2: H - PAD + 4,
      stroke: "#999" }));
    nodes.push(el("text", { class: "axis tick-x", x: sx(t), y: H - PAD + 15,
      "text-anchor": "middle", "data-t": t }, text));
  }
  for (const y of valueTicks(y0, y1)) {
    nodes.push(el("line", { x1: L, x2: W - PAD / 2, y1: sy(y), y2: sy(y), stroke: "#eee" }));
    nodes.push(el("text", { class: "axis tick-y", x: L - 4, y: sy(y) + 4, "text-anchor": "end" },
      yFormat(y)));
  }
  for (const [t, version] of marks || []) {
    if (t < x0 || t > x1) continue;
    nodes.push(el("line", { class: "mark", x1: sx(t), x2: sx(t), y1: PAD, y2: H - PAD,
      stroke: "#999", "stroke-dasharray": "3,3", "data-t": t }));
    nodes.push(el("text", { class: "axis", x: sx(t) + 3, y: PAD + 10 },
      version === null ? "naive" : `v${version}`));
  }
  for (const s of series) {
    // partitions arrive interleaved: drawn in event-time order
    const pts = s.points.filter(inRange).sort((a, b) => a[0] - b[0]);
    nodes.push(el("polyline", { class: "series", "data-name": s.name, fill: "none",
      "data-version": s.version ?? "", "data-ts": pts.map((p) => p[0]).join(","),
      stroke: s.color, "stroke-width": 1.5,
      points: pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ") }));
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
  const price = state.price[symbol] || [];
  const pairs = state.pairs[symbol] || [];
  const range = timeRange(price, pairs.map((p) => [p[0], p[2]]),
    state.mae.map((p) => [p[0], p[2]]), state.staleness);
  draw(document.getElementById("chart-price"),
       [{ name: "close", color: "#1f77b4", points: price }], changes, "price (close)", range);
  draw(document.getElementById("chart-pairs"), [
    { name: "predicted", color: "#d62728", points: pairs.map((p) => [p[0], p[1]]) },
    { name: "actual", color: "#2ca02c", points: pairs.map((p) => [p[0], p[2]]) },
  ], changes, "change over the horizon", range);
  // the error of each served version over the time it served, beside the naive forecast's
  // one line per (model, version): shards serve models of their own
  const key = (p) => `${p[4] ?? ""}\u0000${p[1]}`;
  const versions = [...new Map(state.mae.map((p) => [key(p), p])).values()];
  const label = (p) => (p[1] === 0 ? "naive served" : `${p[4] ? `${p[4]} ` : ""}v${p[1]}`);
  draw(document.getElementById("chart-mae"), [
    ...versions.map((first, i) => ({
      name: label(first), version: first[1], color: PALETTE[i % PALETTE.length],
      points: state.mae.filter((p) => key(p) === key(first)).map((p) => [p[0], p[2]]),
    })),
    { name: "baseline", color: "#7f7f7f", points: state.mae.map((p) => [p[0], p[3]]) },
  ], changes, "rolling MAE", range);
  document.getElementById("mae-legend").replaceChildren(
    ...versions.map((first, i) => {
      const span = document.createElement("span");
      span.style.color = PALETTE[i % PALETTE.length];
      span.textContent = label(first);
      return span;
    }));
  draw(document.getElementById("chart-staleness"),
       [{ name: "staleness", color: "#ff7f0e", points: state.staleness }], changes,
       "staleness", range, duration);

  const last = state.mae.length ? state.mae[state.mae.length - 1] : null;
  const decision = state.decision;
  const decided = decision ? ` by ${decision.by} at ${hhmm(decision.at)} UTC` +
    (decision.pinned ? ", pinned" : "") : "";
  let served;
  if (state.champion_model !== "baseline" && state.champion !== null) {
    const model = state.champion_model ? `${state.champion_model} ` : "";
    served = `${model}v${state.champion}` + (decision ? ` (${decision.action}${decided})` : "");
  } else if (decision && decision.action === "retire") {
    served = `naive baseline (the champion was retired${decided}: it erred more than naive)`;
  } else {
    served = "naive baseline (no version has beaten it yet)";
  }
  document.getElementById("champion").textContent = served;
  document.getElementById("joined").textContent = state.counts.joined;
  document.getElementById("pending").textContent = state.counts.pending;
  document.getElementById("mae").textContent = last ? fmt(last[2]) : "-";
  document.getElementById("baseline").textContent = last ? fmt(last[3]) : "-";
  document.getElementById("alerts").textContent = state.alerts.length;
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
  document.body.dataset.symbol = symbol ?? "";
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
