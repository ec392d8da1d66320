/**
 * A small line chart drawn as inline SVG by the dashboard's script (no library: the pages load nothing
 * from elsewhere). Each chart is a card with a title, the last value of every series, a y axis with
 * ticks and a label, an x axis with ticks and a label, and one polyline per series. Polylines carry
 * `data-series` and `data-points`, the plot its x range (`data-x0`, `data-x1`) and time ticks their time
 * (`data-t`), so tests can check what was drawn.
 *
 * A time axis has at most 6 ticks on round local times (a minute to a day apart), read HH:MM; when it
 * crosses midnight, the first tick and each tick on a new day carry the date on a second line, so labels
 * stay short and never overlap.
 */

/** Browser JavaScript defining `lineChart(spec)`; it uses `el` from the shared helpers. */
export const CHART_SCRIPT = String.raw`
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fde", "#e0662b", "#1a9c6b", "#8a4fd8", "#c4321f"];
const MINUTE = 60000;

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function isNum(v) {
  return typeof v === "number" && isFinite(v);
}

function lastValue(ys) {
  for (let i = ys.length - 1; i >= 0; i--) if (isNum(ys[i])) return ys[i];
  return null;
}

/** About 'count' round tick values from lo to hi. */
function niceTicks(lo, hi, count, integer) {
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / mag;
  let step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  if (integer) step = Math.max(1, Math.round(step));
  const ticks = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    // A tick that is zero but for floating-point noise (-5.55e-17) is zero.
    ticks.push(Math.abs(t) < step * 1e-6 ? 0 : Number(t.toPrecision(12)));
  }
  return ticks;
}

const DAY = 24 * 60 * MINUTE;
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080].map((m) => m * MINUTE);
const MAX_TIME_TICKS = 6;
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** At most MAX_TIME_TICKS ticks from lo to hi (ms), on round times of the browser's clock (09:00, 09:15, midnight). */
function timeTicks(lo, hi) {
  const step = TIME_STEPS.find((s) => (hi - lo) / s < MAX_TIME_TICKS) || TIME_STEPS[TIME_STEPS.length - 1];
  // Round in local time: the offset (ms) from UTC to the local clock, as it is at lo.
  const offset = -new Date(lo).getTimezoneOffset() * MINUTE;
  const ticks = [];
  for (let t = Math.ceil((lo + offset) / step) * step - offset; t <= hi; t += step) ticks.push(t);
  return { ticks, step };
}

function fmtMinute(ms) {
  const d = new Date(ms);
  return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
}

function fmtDate(ms) {
  const d = new Date(ms);
  return MONTHS[d.getMonth()] + " " + d.getDate();
}

/** A time tick's label lines: HH:MM, and the date under the first tick and each tick on a new day. */
function timeTickLines(t, previous, lo, hi, step) {
  if (step >= DAY) return [fmtDate(t)];
  const days = fmtDate(lo) !== fmtDate(hi);
  return days && (previous === undefined || fmtDate(previous) !== fmtDate(t)) ? [fmtMinute(t), fmtDate(t)] : [fmtMinute(t)];
}

/**
 * spec: { id, title, xLabel, yLabel, xs: number[], series: [{ name, ys: (number|null)[], color?, dashed?, faint?, last? }],
 *   xKind: "integer" | "time", yFormat(v), yMin?, yMax?, empty?, markers?: [{ x, label, color }] }
 * A faint series is drawn thin and pale behind the others (raw values behind their smoothing), out of the legend;
 * 'last' is the value the legend shows instead of the series' own last one; a marker is a
 * vertical line at x (an event: a publish, a gate refusal, a reference refresh) with its label as a tooltip.
 */
function lineChart(spec) {
  const W = 440, H = 244, L = 58, R = 16, T = 12, B = 56;
  const pw = W - L - R, ph = H - T - B;
  const yFormat = spec.yFormat || fmtNumber;
  const card = el("section", { class: "chart", "data-chart": spec.id });
  const legend = el("div", { class: "legend" });
  spec.series.forEach((s, i) => {
    s.color = s.color || PALETTE[i % PALETTE.length];
    if (s.faint) return; // its solid twin carries the legend
    const last = s.last !== undefined ? s.last : lastValue(s.ys);
    legend.append(el("span", { class: "item" },
      el("span", { class: "swatch" + (s.dashed ? " dashed" : ""), style: "border-color:" + s.color }),
      s.name + " ",
      el("b", { class: "last", "data-series": s.name }, last === null ? "–" : yFormat(last))));
  });
  card.append(el("h3", {}, spec.title), legend);
  const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": spec.title });
  card.append(svg);

  const xs = spec.xs;
  const values = spec.series.flatMap((s) => s.ys.filter(isNum));
  if (xs.length === 0 || values.length === 0) {
    svg.setAttribute("data-empty", "true");
    svg.append(svgEl("rect", { x: L, y: T, width: pw, height: ph, fill: "#fafbfc", stroke: "#e3e7ee" }));
    svg.append(svgEl("text", { x: L + pw / 2, y: T + ph / 2, "text-anchor": "middle", class: "empty" },
      spec.empty || "no data yet"));
    return card;
  }
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= spec.xKind === "time" ? MINUTE : 1; x1 += spec.xKind === "time" ? MINUTE : 1; }
  const lo = Math.min(...values), hi = Math.max(...values);
  let y0 = lo, y1 = hi;
  if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  else { const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad; }
  // A natural range (0 to 1 for rates, 0 up for counts) is kept whenever the data fits in it.
  if (spec.yMin !== undefined && lo >= spec.yMin) y0 = spec.yMin;
  if (spec.yMax !== undefined && hi <= spec.yMax) y1 = spec.yMax;
  svg.setAttribute("data-x0", x0);
  svg.setAttribute("data-x1", x1);
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y) => T + ph - ((y - y0) / (y1 - y0)) * ph;

  const grid = svgEl("g", { class: "grid" });
  for (const t of niceTicks(y0, y1, 4, false)) {
    grid.append(svgEl("line", { x1: L, x2: L + pw, y1: sy(t), y2: sy(t) }));
    svg.append(svgEl("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end", class: "tick y" }, yFormat(t)));
  }
  const time = spec.xKind === "time" ? timeTicks(x0, x1) : null;
  const xTicks = time ? time.ticks : niceTicks(x0, x1, 5, true);
  xTicks.forEach((t, i) => {
    grid.append(svgEl("line", { x1: sx(t), x2: sx(t), y1: T, y2: T + ph }));
    const lines = time ? timeTickLines(t, xTicks[i - 1], x0, x1, time.step) : [fmtNumber(t)];
    svg.append(svgEl("text", { x: sx(t), y: T + ph + 15, "text-anchor": "middle", class: "tick x", "data-t": time ? t : null },
      ...lines.map((line, j) => svgEl("tspan", { x: sx(t), dy: j === 0 ? null : 13 }, line))));
  });
  svg.prepend(grid);
  for (const m of spec.markers || []) {
    if (!(m.x >= x0 && m.x <= x1)) continue;
    const line = svgEl("line", {
      "data-marker": m.label, x1: sx(m.x), x2: sx(m.x), y1: T, y2: T + ph,
      stroke: m.color || "#98a2b3", "stroke-width": 1, "stroke-dasharray": "2 3",
    });
    line.append(svgEl("title", {}, m.label));
    svg.append(line);
  }
  svg.append(svgEl("line", { class: "axis", x1: L, x2: L + pw, y1: T + ph, y2: T + ph }));
  svg.append(svgEl("line", { class: "axis", x1: L, x2: L, y1: T, y2: T + ph }));
  svg.append(svgEl("text", { x: L + pw / 2, y: H - 6, "text-anchor": "middle", class: "label x" }, spec.xLabel));
  svg.append(svgEl("text", {
    x: 0, y: 0, "text-anchor": "middle", class: "label y",
    transform: "translate(13 " + (T + ph / 2) + ") rotate(-90)",
  }, spec.yLabel));

  for (const s of spec.series) {
    const pts = [];
    s.ys.forEach((y, i) => { if (isNum(y) && isNum(xs[i])) pts.push([sx(xs[i]), sy(y)]); });
    if (pts.length === 0) continue;
    svg.append(svgEl("polyline", {
      "data-series": s.name,
      "data-points": pts.length,
      points: pts.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "),
      fill: "none",
      stroke: s.color,
      "stroke-width": s.faint ? 1 : 1.8,
      "stroke-opacity": s.faint ? 0.3 : null,
      "stroke-dasharray": s.dashed ? "5 4" : null,
      "stroke-linejoin": "round",
    }));
    if (s.faint) continue;
    const dots = pts.length <= 40 ? pts : [pts[pts.length - 1]];
    for (const [cx, cy] of dots) svg.append(svgEl("circle", { cx, cy, r: 2.6, fill: s.color }));
  }
  return card;
}
`;

/** CSS of the chart cards. */
export const CHART_CSS = String.raw`
.grid-charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(400px, 1fr)); gap: 14px; }
.chart { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px 4px; }
.chart h3 { margin: 0; font-size: 14px; }
.chart .legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; color: var(--muted); margin: 2px 0; }
.chart .legend b { color: var(--fg); font-variant-numeric: tabular-nums; }
.chart .swatch { display: inline-block; width: 14px; height: 0; border-top: 2px solid; vertical-align: middle;
  margin-right: 4px; }
.chart .swatch.dashed { border-top-style: dashed; }
.chart svg { width: 100%; height: auto; display: block; }
.chart .grid line { stroke: #edf0f4; }
.chart .axis { stroke: #98a2b3; }
.chart text { font-size: 11px; fill: #667085; }
.chart text.label { font-size: 11.5px; fill: #344054; }
.chart text.empty { font-size: 13px; fill: #98a2b3; }
`;
