// lookout dashboard: plain JavaScript and SVG, no third-party code (the box may be offline).
"use strict";

// `optional` charts appear only when their series have data (an app without tools shows no
// empty tool chart); the core ones say "no data yet" instead.
const CHARTS = [
  { title: "Latency (s)", series: ["latency_p50", "latency_p95", "latency_p99"] },
  { title: "Requests / s", series: ["qps"] },
  { title: "Output tokens / s", series: ["tps"] },
  { title: "Error rate", series: ["error_rate"], percent: true },
  { title: "Cost / hour", series: ["cost_per_hour"] },
  { title: "Drift score (detector's threshold: 1)", prefix: "drift_score" },
  { title: "OOD rate", prefix: "ood_rate", percent: true },
  { title: "Judge pass rate", series: ["judge_pass_rate"], percent: true, max: 1 },
  { title: "User feedback: mean score", prefix: "feedback_score", optional: true },
  { title: "User feedback: negative rate", prefix: "negative_feedback_rate", percent: true,
    max: 1, optional: true },
  { title: "Active users / sessions", series: ["active_users", "active_sessions"],
    optional: true },
  { title: "Session duration (s)", series: ["session_duration_p50", "session_duration_p95"],
    optional: true },
  { title: "Tool calls / request", prefix: "tool_calls_per_request", optional: true },
  { title: "Tool error rate", prefix: "tool_error_rate", percent: true, optional: true },
  { title: "Tool latency p95 (s)", prefix: "tool_latency_p95", optional: true },
  { title: "Retrieval latency p95 (s)", series: ["retrieval_latency_p95"], optional: true },
  { title: "Empty retrieval rate", series: ["empty_retrieval_rate"], percent: true, max: 1,
    optional: true },
  { title: "Shadow model preferred (judge, -1 to 1)", prefix: "judge_preference", min: -1,
    max: 1, optional: true },
  { title: "Similarity to reference answers", prefix: "judge_reference_similarity", max: 1,
    optional: true },
];
// The label a labelled series' key carries after its metric: drift_score:prompt is
// field=prompt, judge_preference:<shadow model> is shadow_model=<shadow model>.
const LABELS = {
  drift_score: "field", ood_rate: "field", feedback_score: "key", negative_feedback_rate: "key",
  tool_calls_per_request: "tool", tool_error_rate: "tool", tool_latency_p95: "tool",
  judge_preference: "shadow_model", judge_reference_similarity: "method",
};
const COLORS = ["#4c8dff", "#f5a524", "#e5484d", "#30a46c", "#a78bfa", "#22d3ee"];
const params = new URLSearchParams(location.search);
const REFRESH_S = Math.max(1, Number(params.get("refresh") || 10));
let range = params.get("range") || "auto";
let shown = "1h";  // the range on screen (what auto chose): how times are written

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

// A score against its threshold: three decimals, so a close call does not read "0.42 > 0.42".
function score(value) {
  return value === null || value === undefined ? "-" : value.toFixed(3);
}

function clock(ts) {
  const d = new Date(ts * 1000);
  return shown === "7d"
    ? d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })
    : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

const TICKS_S = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800];

// The rules on one of a chart's series: a rule on its metric whose `where` the app and the
// labels in the series' key satisfy (a label the key does not carry is not checked).
function rulesOn(thresholds, app, name) {
  const [metric, label] = name.split(":");
  const labels = { app };
  if (LABELS[metric]) labels[LABELS[metric]] = label;
  return thresholds.filter((r) => r.metric === metric && Object.entries(r.where)
    .every(([k, v]) => labels[k] === undefined || labels[k] === v));
}

function nearest(series, t) {
  let best = null;
  for (const point of series) {
    if (best === null || Math.abs(point[0] - t) < Math.abs(best[0] - t)) best = point;
  }
  return best;
}

function chart(spec, data, ctx) {
  const { since, now, app, thresholds, bands } = ctx;
  const names = spec.prefix
    ? Object.keys(data).filter((k) => k.split(":")[0] === spec.prefix).sort()
    : spec.series.filter((k) => data[k]);
  if (spec.optional && !names.length) return null;
  const rules = [...new Set(names.flatMap((n) => rulesOn(thresholds, app, n)))];
  const box = el("div", { class: "chart", "data-chart": spec.prefix || spec.series[0] });
  box.append(el("h3", {}, spec.title));
  const W = 320, H = 130, L = 34, B = 16, T = 6, R = 6;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  let points = 0;
  let top = spec.max || 0;
  // Below 0 only for a statistic that can be (an unbiased MMD estimate, a preference).
  let bottom = Math.min(spec.min || 0, 0);
  for (const name of names) {
    for (const [, v] of data[name]) {
      top = Math.max(top, v);
      bottom = Math.min(bottom, v);
    }
    for (const [, , high] of bands[name] || []) top = Math.max(top, high);
  }
  for (const rule of rules) top = Math.max(top, rule.threshold * 1.15);
  top = spec.max && top <= spec.max ? spec.max : top > 0 ? top * 1.08 : 1;
  const span = Math.max(now - since, 1);
  const x = (t) => L + ((t - since) / span) * (W - L - R);
  const y = (v) => T + (1 - (v - bottom) / (top - bottom)) * (H - T - B);
  const label = (text, attrs) => {
    const t = svgEl("text", { class: "axis-label", ...attrs });
    t.textContent = text;
    svg.append(t);
  };
  // Time gridlines at a round step, about five across, labelled below.
  const step = TICKS_S.find((s) => span / s <= 6) || TICKS_S[TICKS_S.length - 1];
  const offset = new Date().getTimezoneOffset() * 60;  // ticks on round local times
  for (let t = Math.ceil((since - offset) / step) * step + offset; t <= now; t += step) {
    svg.append(svgEl("line", { class: "gridline", x1: x(t), x2: x(t), y1: T, y2: H - B }));
    const half = clock(t).length * 2.6;  // about half the label's width at 10 px
    if (x(t) - half > L && x(t) + half < W) {
      label(clock(t), { x: x(t), y: H - 3, "text-anchor": "middle" });
    }
  }
  svg.append(svgEl("line", { class: "gridline", x1: L, x2: W - R, y1: y((top + bottom) / 2),
                             y2: y((top + bottom) / 2) }));
  svg.append(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  label(fmt(top, spec.percent), { x: 2, y: T + 8 });
  label(fmt((top + bottom) / 2, spec.percent), { x: 2, y: y((top + bottom) / 2) + 3 });
  label(bottom < 0 ? fmt(bottom, spec.percent) : "0", { x: 2, y: H - B });
  // An anomaly rule's expected band: shaded under the series it watches.
  for (const name of names.filter((n) => bands[n] && bands[n].length)) {
    const band = bands[name];
    const upper = band.map(([t, , hi]) => `${x(t).toFixed(1)},${y(hi).toFixed(1)}`);
    const lower = band.map(([t, lo]) => `${x(t).toFixed(1)},${y(Math.max(lo, bottom)).toFixed(1)}`);
    svg.append(svgEl("polygon", { class: "band", points: [...upper, ...lower.reverse()].join(" "),
                                  "data-band": name }));
  }
  const legend = el("div", { class: "legend" });
  for (const rule of rules) {
    const line = svgEl("line", { class: "threshold", x1: L, x2: W - R, y1: y(rule.threshold),
                                 y2: y(rule.threshold), "data-rule": rule.rule });
    const title = svgEl("title");
    title.textContent = `rule ${rule.rule}: ${rule.op} ${fmt(rule.threshold, spec.percent)}`;
    line.append(title);
    svg.append(line);
    const item = el("span", { class: "rule" });
    item.append(el("i", { class: "threshold-swatch" }),
                `${rule.rule} ${rule.op} ${fmt(rule.threshold, spec.percent)}`);
    legend.append(item);
  }
  const drawn = [];
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
    const shownName = spec.prefix ? name.split(":")[1] || name : name.replaceAll("_", " ");
    item.append(swatch, `${shownName} ${fmt(last, spec.percent)}`);
    legend.insertBefore(item, legend.querySelector(".rule"));
    drawn.push({ label: shownName, color, series });
  });
  if (!names.length) {
    const t = svgEl("text", { class: "empty", x: W / 2 - 30, y: H / 2 });
    t.textContent = "no data yet";
    svg.append(t);
  }
  svg.setAttribute("data-points", String(points));
  box.append(svg, legend);
  if (drawn.length) hover(box, svg, drawn, { x, W, L, R, T, B, H, since, span, percent: spec.percent });
  return box;
}

// Hover: a cursor line at the pointer's time and a tip with each series' nearest value.
function hover(box, svg, drawn, g) {
  const cursor = svgEl("line", { class: "cursor", y1: g.T, y2: g.H - g.B, visibility: "hidden" });
  svg.append(cursor);
  const tip = el("div", { class: "tip", hidden: "" });
  box.append(tip);
  svg.addEventListener("mousemove", (event) => {
    const rect = svg.getBoundingClientRect();
    const vx = ((event.clientX - rect.left) / rect.width) * g.W;
    const t = g.since + ((vx - g.L) / (g.W - g.L - g.R)) * g.span;
    const hits = drawn.map((d) => ({ ...d, point: nearest(d.series, t) })).filter((d) => d.point);
    if (!hits.length) return;
    const at = hits[0].point[0];
    cursor.setAttribute("x1", g.x(at));
    cursor.setAttribute("x2", g.x(at));
    cursor.setAttribute("visibility", "visible");
    tip.replaceChildren(el("b", {}, clock(at)));
    for (const h of hits) {
      const row = el("div");
      const swatch = el("i");
      swatch.style.background = h.color;
      row.append(swatch, `${h.label} ${fmt(h.point[1], g.percent)}`);
      tip.append(row);
    }
    tip.hidden = false;
    const left = event.clientX - box.getBoundingClientRect().left;
    tip.style.left = `${Math.min(left + 12, box.clientWidth - tip.offsetWidth - 4)}px`;
  });
  svg.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    tip.hidden = true;
  });
}

function spanText(seconds) {
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 2 * 86400) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} days`;
}

function renderApps(body) {
  shown = body.shown;
  const auto = body.range === "auto" ? `auto (${body.shown} range): ` : "";
  document.getElementById("shown-range").textContent =
    `${auto}${clock(body.since)} – ${clock(body.now)}, ${spanText(body.now - body.since)}`;
  const root = document.getElementById("apps");
  const sections = [];
  const apps = body.apps.length ? body.apps : [];
  for (const app of apps) {
    const section = el("section", { class: "app", "data-app": app });
    section.append(el("h2", {}, app));
    const grid = el("div", { class: "grid" });
    const ctx = { since: body.since, now: body.now, app, thresholds: body.thresholds || [],
                  bands: (body.bands || {})[app] || {} };
    for (const spec of CHARTS) {
      const box = chart(spec, body.series[app] || {}, ctx);
      if (box) grid.append(box);
    }
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
    // One row per flagged field: its score against its threshold, and that field's text.
    const flagged = ood.flatMap((r) => r.flagged.map((f) => ({ ...r, ...f })));
    renderRows("ood", flagged, (r) => [
      [clock(r.ts)], [r.app], [r.field],
      [r.threshold === null ? score(r.score) : `${score(r.score)} > ${score(r.threshold)}`,
       "score"],
      [r[r.field] ?? "", "text"]]);
    document.getElementById("no-ood").hidden = flagged.length > 0;
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
