// lookout dashboard: plain JavaScript and SVG, no third-party code (the box may be offline).
"use strict";

const CHARTS = [
  { title: "Latency (s)", series: ["latency_p50", "latency_p95", "latency_p99"] },
  { title: "Requests / s", series: ["qps"] },
  { title: "Output tokens / s", series: ["tps"] },
  { title: "Error rate", series: ["error_rate"], percent: true },
  { title: "Cost / hour", series: ["cost_per_hour"] },
  { title: "Drift score (threshold 1)", prefix: "drift_score", threshold: 1 },
  { title: "OOD rate", prefix: "ood_rate", percent: true },
  { title: "Judge pass rate", series: ["judge_pass_rate"], percent: true, max: 1 },
];
const COLORS = ["#4c8dff", "#f5a524", "#e5484d", "#30a46c", "#a78bfa", "#22d3ee"];
const params = new URLSearchParams(location.search);
const REFRESH_S = Math.max(1, Number(params.get("refresh") || 10));
let range = params.get("range") || "1h";

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function fmt(value, percent) {
  if (value === null || value === undefined || Number.isNaN(value)) return "-";
  if (percent) return `${(value * 100).toFixed(value < 0.1 ? 1 : 0)}%`;
  if (Math.abs(value) >= 100) return value.toFixed(0);
  if (Math.abs(value) >= 1) return value.toFixed(2);
  return value.toPrecision(2);
}

function clock(ts) {
  const d = new Date(ts * 1000);
  return range === "7d"
    ? d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })
    : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function chart(spec, data, since, now, bands = {}) {
  const names = spec.prefix
    ? Object.keys(data).filter((k) => k.split(":")[0] === spec.prefix).sort()
    : spec.series.filter((k) => data[k]);
  const box = el("div", { class: "chart" });
  box.append(el("h3", {}, spec.title));
  const W = 320, H = 130, L = 34, B = 16, T = 6, R = 6;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  let points = 0;
  let top = spec.max || 0;
  let bottom = 0;  // below 0 only for a statistic that can be (an unbiased MMD estimate)
  for (const name of names) {
    for (const [, v] of data[name]) {
      top = Math.max(top, v);
      bottom = Math.min(bottom, v);
    }
    for (const [, , high] of bands[name] || []) top = Math.max(top, high);
  }
  if (spec.threshold) top = Math.max(top, spec.threshold * 1.2);
  top = spec.max && top <= spec.max ? spec.max : top > 0 ? top * 1.08 : 1;
  const x = (t) => L + ((t - since) / Math.max(now - since, 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - bottom) / (top - bottom)) * (H - T - B);
  svg.append(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  const label = (text, attrs) => {
    const t = svgEl("text", { class: "axis-label", ...attrs });
    t.textContent = text;
    svg.append(t);
  };
  label(fmt(top, spec.percent), { x: 2, y: T + 8 });
  label(bottom < 0 ? fmt(bottom, spec.percent) : "0", { x: 2, y: H - B });
  label(clock(since), { x: L, y: H - 3 });
  label("now", { x: W - R - 18, y: H - 3 });
  if (spec.threshold) {
    svg.append(svgEl("line", { class: "threshold", x1: L, x2: W - R,
                               y1: y(spec.threshold), y2: y(spec.threshold) }));
  }
  // An anomaly rule's expected band: shaded under the series it watches.
  for (const name of names.filter((n) => bands[n] && bands[n].length)) {
    const band = bands[name];
    const upper = band.map(([t, , hi]) => `${x(t).toFixed(1)},${y(hi).toFixed(1)}`);
    const lower = band.map(([t, lo]) => `${x(t).toFixed(1)},${y(Math.max(lo, bottom)).toFixed(1)}`);
    svg.append(svgEl("polygon", { class: "band", points: [...upper, ...lower.reverse()].join(" "),
                                  "data-band": name }));
  }
  const legend = el("div", { class: "legend" });
  names.forEach((name, i) => {
    const color = COLORS[i % COLORS.length];
    const series = data[name];
    points += series.length;
    const coords = series.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(svgEl("polyline", { points: coords, fill: "none", stroke: color,
                                   "stroke-width": 1.6, "data-series": name }));
    if (series.length < 3) {
      for (const [t, v] of series) {
        svg.append(svgEl("circle", { cx: x(t), cy: y(v), r: 2.5, fill: color }));
      }
    }
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = color;
    const last = series.length ? series[series.length - 1][1] : null;
    const shown = spec.prefix ? name.split(":")[1] || name : name.replaceAll("_", " ");
    item.append(swatch, `${shown} ${fmt(last, spec.percent)}`);
    legend.append(item);
  });
  if (!names.length) {
    const t = svgEl("text", { class: "empty", x: W / 2 - 30, y: H / 2 });
    t.textContent = "no data yet";
    svg.append(t);
  }
  svg.setAttribute("data-points", String(points));
  box.append(svg, legend);
  return box;
}

function renderApps(body) {
  const root = document.getElementById("apps");
  const sections = [];
  const apps = body.apps.length ? body.apps : [];
  for (const app of apps) {
    const section = el("section", { class: "app", "data-app": app });
    section.append(el("h2", {}, app));
    const grid = el("div", { class: "grid" });
    for (const spec of CHARTS) grid.append(chart(spec, body.series[app] || {}, body.since, body.now,
                                                 (body.bands || {})[app] || {}));
    section.append(grid);
    sections.push(section);
  }
  if (!sections.length) {
    sections.push(el("p", { class: "muted" }, "No records yet: publish some on the bus or POST /api/v1/records."));
  }
  root.replaceChildren(...sections);
}

function renderAlerts(alerts) {
  const tbody = document.querySelector("#alerts tbody");
  const rows = alerts.map((a) => {
    const tr = el("tr", { class: `alert ${a.state}`, "data-rule": a.rule });
    const labels = Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(" ");
    tr.append(el("td", { class: `state ${a.state}` }, a.state), el("td", {}, a.rule),
              el("td", {}, labels), el("td", {}, fmt(a.value)),
              el("td", {}, a.active_since ? new Date(a.active_since * 1000).toLocaleTimeString() : "-"));
    return tr;
  });
  tbody.replaceChildren(...rows);
  document.getElementById("no-alerts").hidden = alerts.some((a) => a.state === "firing");
}

function renderRows(id, rows, cells) {
  const tbody = document.querySelector(`#${id} tbody`);
  tbody.replaceChildren(...rows.map((r) => {
    const tr = el("tr");
    for (const [value, cls] of cells(r)) tr.append(el("td", cls ? { class: cls } : {}, value ?? ""));
    return tr;
  }));
}

async function refresh() {
  try {
    const [series, alerts, ood, judge] = await Promise.all([
      getJSON(`/api/v1/series?range=${range}`), getJSON("/api/v1/alerts"),
      getJSON("/api/v1/ood?limit=10"), getJSON("/api/v1/judge/failures?limit=10"),
    ]);
    renderApps(series);
    renderAlerts(alerts);
    renderRows("ood", ood, (r) => [[clock(r.ts)], [r.app], [fmt(r.ood_score)],
                                   [r.prompt, "text"], [r.response, "text"]]);
    renderRows("judge", judge, (r) => [[clock(r.judged_at)], [r.app], [r.criterion],
                                       [r.prompt, "text"], [r.response, "text"],
                                       [r.reasoning, "text"]]);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    document.getElementById("updated").textContent = `update failed: ${err.message}`;
  }
}

for (const button of document.querySelectorAll("#ranges button")) {
  button.classList.toggle("active", button.dataset.range === range);
  button.addEventListener("click", () => {
    range = button.dataset.range;
    for (const b of document.querySelectorAll("#ranges button")) b.classList.toggle("active", b === button);
    refresh();
  });
}
refresh();
setInterval(refresh, REFRESH_S * 1000);
