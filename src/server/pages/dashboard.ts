/**
 * `/`: the dashboard. Served without a key; its script reads `GET /v1/dashboard` with the key from the
 * URL fragment (`#key=...`, an API key or a label key) every 5 seconds and draws the training metrics,
 * held-out accuracy per version, the pairs' flow and the judges' agreement over time, each automated judge's
 * cost (calls, failures, latency, tokens) and each ensemble member's agreement, the versions and the latest
 * pairs with their verdicts. The time charts share one axis: the whole run by default (as far as the
 * per-minute counters are kept), or the last hour or day (a select, remembered in the browser); the server
 * sums the counters into at most 180 points, and titles and axis labels name the span of one point.
 */
import { CHART_CSS, CHART_SCRIPT } from "./_chart.ts";
import { htmlPage, type StaticPage } from "./_page.ts";

const BODY = String.raw`<header class="top">
  <h1>Online DPO</h1>
  <nav><a href="/">Dashboard</a><a href="/label">Label pairs</a></nav>
  <span class="right" id="updated">loading…</span>
</header>
<main>
  <p id="error" class="error" role="alert"></p>
  <section class="cards" id="cards"></section>
  <h2>Training steps
    <label class="smoothing">smoothing <input id="smoothing" type="range" min="0" max="0.99" step="0.01" value="0.6">
      <output id="smoothing-value">0.6</output></label></h2>
  <div class="grid-charts" id="training"></div>
  <h2>Versions and flow
    <label class="control">time axis <select id="window">
      <option value="">whole run</option><option value="60">last hour</option><option value="1440">last 24 h</option>
    </select></label></h2>
  <p class="note" id="window-note"></p>
  <div class="grid-charts" id="flow"></div>
  <h2>Judges</h2>
  <div class="table-wrap">
    <table id="judges">
      <thead><tr><th>Judge</th><th>Calls</th><th>Failures</th><th>Mean latency</th><th>Requests</th>
        <th>Prompt tokens</th><th>Completion tokens</th><th>Agreed with the ensemble</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <div class="grid-charts" id="judge-charts"></div>
  <h2>Latest pairs</h2>
  <div class="table-wrap">
    <table id="latest">
      <thead><tr><th>Created</th><th>Status</th><th>Prompt</th><th>Response A</th><th>Response B</th>
        <th>Verdict</th><th>Judge</th><th>Agreed</th><th>Latency</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
</main>`;

const CSS = String.raw`
h2 { font-size: 15px; margin: 22px 0 10px; }
h2 .smoothing, h2 .control { font-size: 12px; font-weight: normal; color: var(--muted); margin-left: 16px; }
h2 .smoothing input { vertical-align: middle; }
.note { font-size: 12px; color: var(--muted); margin: -4px 0 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 140px; }
.card .name { font-size: 12px; color: var(--muted); }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .sub { font-size: 12px; color: var(--muted); }
.table-wrap { overflow-x: auto; background: var(--card); border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid #eef0f3; }
th { font-weight: 600; color: var(--muted); background: #fafbfc; }
td.text { max-width: 260px; white-space: pre-wrap; overflow-wrap: anywhere; }
td.chosen { background: #e8f5ee; }
td.chosen::before { content: "✓ "; color: var(--good); font-weight: 600; }
.status { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; background: #eef0f3; }
.status.labeled { background: #e3edff; } .status.trained { background: #e8f5ee; } .status.tie { background: #fff4e5; }
.status.expired { background: #f3e8e8; }
td.empty { color: var(--muted); text-align: center; padding: 18px; }
`;

const SCRIPT = String.raw`
const REFRESH_MS = 5000;
let timer = null;
// Each refresh's number: an answer to an older one (the time axis changed meanwhile) is dropped.
let refreshes = 0;

function card(name, value, sub, id) {
  return el("div", { class: "card", "data-card": id }, el("div", { class: "name" }, name),
    el("div", { class: "value" }, value), el("div", { class: "sub" }, sub || ""));
}

function renderCards(d) {
  const p = d.policy, t = d.trainer, n = d.pairs;
  const version = (v) => (v === null || v === undefined ? "–" : "v" + v);
  document.getElementById("cards").replaceChildren(
    card("Policy (current)", version(p.current),
      "serving " + version(p.serving) + " here" + (p.switched_at ? " · since " + fmtAgo(p.switched_at, d.now) : ""),
      "policy"),
    card("Reference", p.reference === null ? "–" : "#" + p.reference,
      t ? "refreshes so far · trainer from v" + t.policy_version : "no trainer status yet", "reference"),
    card("Trainer step", t ? fmtNumber(t.step) : "–",
      t ? t.owner + " · " + fmtAgo(t.updated_at, d.now) : "no trainer status yet", "trainer"),
    card("Awaiting judgment", fmtNumber(n.awaiting_judgment), "pending pairs", "awaiting_judgment"),
    card("Labeled", fmtNumber(n.labeled), "ready to train", "labeled"),
    card("Trained", fmtNumber(n.trained), "in a published version", "trained"),
    card("Ties / expired", fmtNumber(n.tie) + " / " + fmtNumber(n.expired),
      "never trained on · " + fmtNumber(n.identical) + " identical samples never judged", "tie"),
    card("Stale / rejected", fmtNumber(n.stale) + " / " + fmtNumber(n.rejected),
      "labeled, not trained" + (t && t.leases_lost ? " · " + fmtNumber(t.leases_lost) + " leases lost" : ""), "stale"),
    card("Judge failed", fmtNumber(n.judge_failed), "a person can still label these", "judge_failed"),
    card("Gate", fmtNumber(d.gate.promoted) + " / " + fmtNumber(d.gate.refused), "candidates promoted / refused", "gate"),
  );
}

const METRIC_CHARTS = [
  { id: "loss", metrics: ["loss"], title: "Loss", yLabel: "loss" },
  { id: "accuracies", metrics: ["rewards/accuracies"], title: "Reward accuracy", yLabel: "rewards/accuracies",
    yFormat: fmtPercent, yMin: 0, yMax: 1 },
  { id: "margins", metrics: ["rewards/margins"], title: "Reward margin", yLabel: "rewards/margins" },
  {
    id: "kl",
    metrics: ["objective/kl"],
    title: "KL to the reference (estimate: mean log π − log π_ref of the batch's answers; noisy, can dip below 0)",
    yLabel: "objective/kl",
  },
  { id: "rewards", metrics: ["rewards/chosen", "rewards/rejected"], title: "Implicit rewards", yLabel: "reward" },
  { id: "grad_norm", metrics: ["grad_norm"], title: "Gradient norm", yLabel: "grad_norm", yMin: 0 },
  { id: "kto", metrics: ["kto/loss", "kto/kl"], title: "KTO steps on thumbs up/down", yLabel: "loss, KL reference" },
];

// An exponential moving average, debiased as TensorBoard's (the first points are not pulled toward 0);
// missing values are skipped and stay missing.
function smooth(ys, weight) {
  let last = 0, n = 0;
  return ys.map((y) => {
    if (typeof y !== "number" || !isFinite(y)) return null;
    last = last * weight + (1 - weight) * y;
    n++;
    return weight === 0 ? y : last / (1 - Math.pow(weight, n));
  });
}

// Events on the step axis: reference refreshes (the trainer's reference version rising) and gate decisions.
function stepMarkers(d) {
  const m = d.metrics, refs = m.series["ref_version"] || [];
  const markers = [];
  for (let i = 1; i < refs.length; i++) {
    if (typeof refs[i] === "number" && typeof refs[i - 1] === "number" && refs[i] > refs[i - 1]) {
      markers.push({ x: m.step[i], label: "reference refreshed", color: "#8a4fd8" });
    }
  }
  for (const g of d.gate.decisions) {
    markers.push(g.promoted
      ? { x: g.step, label: "published v" + g.version + " (gate passed)", color: "#1a9c6b" }
      : { x: g.step, label: "gate refused a candidate", color: "#c4321f" });
  }
  return markers;
}

let lastData = null;

function renderTraining(d) {
  lastData = d;
  const m = d.metrics;
  const weight = Number(document.getElementById("smoothing").value);
  document.getElementById("smoothing-value").textContent = weight.toFixed(2);
  const note = m.truncated ? " (latest " + fmtNumber(m.steps_read) + " steps)" : "";
  const markers = stepMarkers(d);
  document.getElementById("training").replaceChildren(...METRIC_CHARTS.map((c) => lineChart({
    id: c.id,
    title: c.title + note,
    xLabel: "optimizer step",
    yLabel: c.yLabel,
    xs: m.step,
    // The raw values faint behind, their smoothing on top in the same color; the legend gives the last raw value.
    series: c.metrics.flatMap((name, i) => {
      const ys = m.series[name] || [];
      const color = PALETTE[i % PALETTE.length];
      return [
        { name: name + " (raw)", ys, color, faint: true },
        { name, ys: smooth(ys, weight), color, last: lastValue(ys) },
      ];
    }),
    xKind: "integer",
    yFormat: c.yFormat,
    yMin: c.yMin,
    yMax: c.yMax,
    markers,
    empty: "no training steps yet",
  })));
}

// The time axis: the whole run, or the last hour or day; remembered in the browser.
function setupWindow() {
  const select = document.getElementById("window");
  const saved = localStorage.getItem("dpo.window");
  if (saved !== null && [...select.options].some((o) => o.value === saved)) select.value = saved;
  select.addEventListener("change", () => {
    localStorage.setItem("dpo.window", select.value);
    if (currentKey()) refresh();
  });
}

function setupSmoothing() {
  const input = document.getElementById("smoothing");
  const saved = localStorage.getItem("dpo.smoothing");
  if (saved !== null) input.value = saved;
  input.addEventListener("input", () => {
    localStorage.setItem("dpo.smoothing", input.value);
    if (lastData) renderTraining(lastData);
  });
}

function perBucket(a, f) {
  return a.at.map((_, i) => f(i));
}

// The span of one point of the time charts: "minute", "5 minutes", "hour", "2 hours" (titles) and
// "minute", "5 min", "hour", "2 h" (axis labels).
function bucketName(m) {
  return m === 1 ? "minute" : m === 60 ? "hour" : m % 60 === 0 ? m / 60 + " hours" : m + " minutes";
}
function bucketUnit(m) {
  return m === 1 ? "minute" : m === 60 ? "hour" : m % 60 === 0 ? m / 60 + " h" : m + " min";
}
function timeAxisLabel(w) {
  return "time (" + (w.bucket_minutes === 1 ? "one point a minute" : "one point per " + bucketName(w.bucket_minutes)) + ")";
}

// "45 min", "3 h 10 min", "2 days 5 h".
function fmtSpan(ms) {
  const m = Math.max(0, Math.round(ms / MINUTE));
  if (m < 60) return m + " min";
  if (m < 2 * 1440) return Math.floor(m / 60) + " h" + (m % 60 ? " " + (m % 60) + " min" : "");
  const h = Math.floor((m % 1440) / 60);
  return Math.floor(m / 1440) + " days" + (h ? " " + h + " h" : "");
}

function renderWindowNote(d) {
  const w = d.window, kept = fmtSpan(w.retention_ms);
  const span = w.minutes !== null
    ? "Last " + fmtSpan(w.minutes * MINUTE)
    : w.first_activity === null
    ? "Whole run: nothing counted yet"
    : "Whole run: since " + fmtDate(w.first_activity) + " " + fmtMinute(w.first_activity) + " (" +
      fmtSpan(d.now - w.first_activity) + ")";
  document.getElementById("window-note").textContent = span + " · one point per " + bucketName(w.bucket_minutes) +
    ", counts summed over it (the last point is still filling) · the per-minute counters are kept " + kept +
    ", so a longer run shows its last " + kept + ".";
}

function renderFlow(d) {
  const e = d.evals, a = d.activity, per = bucketName(d.window.bucket_minutes), unit = bucketUnit(d.window.bucket_minutes);
  renderWindowNote(d);
  const judged = (i) => a.labeled[i] + a.tie[i];
  document.getElementById("flow").replaceChildren(
    lineChart({
      id: "evals",
      title: "Held-out accuracy per version",
      xLabel: "policy version",
      yLabel: "accuracy",
      xs: e.map((x) => x.version),
      series: [
        { name: "accuracy", ys: e.map((x) => x.accuracy) },
        { name: "base accuracy", ys: e.map((x) => x.base_accuracy), dashed: true, color: "#98a2b3" },
        { name: "win rate vs base", ys: e.map((x) => x.win_rate_vs_base), color: "#1a9c6b" },
      ],
      xKind: "integer",
      yFormat: fmtPercent,
      yMin: 0,
      yMax: 1,
      empty: "no version evaluated yet",
    }),
    lineChart({
      id: "gate",
      title: "Promotion gate: each candidate against the best served version (" + d.gate.promoted + " promoted, " +
        d.gate.refused + " refused)",
      xLabel: "time",
      yLabel: "accuracy on the gate's prompts",
      xs: d.gate.decisions.map((g) => g.at),
      series: [
        { name: "promoted", ys: d.gate.decisions.map((g) => (g.promoted ? g.candidate_accuracy : null)), color: "#1a9c6b" },
        { name: "refused", ys: d.gate.decisions.map((g) => (g.promoted ? null : g.candidate_accuracy)), color: "#c4321f" },
        { name: "best served", ys: d.gate.decisions.map((g) => g.served_accuracy), dashed: true, color: "#98a2b3" },
      ],
      xKind: "time",
      yFormat: fmtPercent,
      yMin: 0,
      yMax: 1,
      empty: "no candidate judged by the gate yet",
    }),
    lineChart({
      id: "throughput",
      title: "Pairs per " + per,
      xLabel: timeAxisLabel(d.window),
      yLabel: "pairs / " + unit,
      xs: a.at,
      series: [
        { name: "created", ys: perBucket(a, (i) => a.created[i] + a.imported[i]) },
        { name: "judged", ys: perBucket(a, judged) },
        { name: "trained", ys: a.trained },
      ],
      xKind: "time",
      yMin: 0,
    }),
    lineChart({
      id: "agreement",
      title: "Judge agreement and ties per " + per,
      xLabel: timeAxisLabel(d.window),
      yLabel: "share of verdicts",
      xs: a.at,
      series: [
        { name: "judge agreed", ys: perBucket(a, (i) => {
          const n = a.agreed[i] + a.disagreed[i];
          return n === 0 ? null : a.agreed[i] / n;
        }) },
        { name: "ties", ys: perBucket(a, (i) => (judged(i) === 0 ? null : a.tie[i] / judged(i))), color: "#e0662b" },
      ],
      xKind: "time",
      yFormat: fmtPercent,
      yMin: 0,
      yMax: 1,
      empty: "no verdicts in this window",
    }),
  );
}

// Each judge's counters per point of the time axis, as one series a judge; null where the judge had nothing to show.
function judgeSeries(j, f) {
  return Object.keys(j.series).sort().map((id) => ({ name: id, ys: j.at.map((_, i) => f(j.series[id], i)) }))
    .filter((s) => s.ys.some((y) => y !== null));
}

function renderJudges(d) {
  const j = d.judges, per = bucketName(d.window.bucket_minutes), unit = bucketUnit(d.window.bucket_minutes);
  const xLabel = timeAxisLabel(d.window);
  const ids = Object.keys(j.totals).sort();
  const body = document.querySelector("#judges tbody");
  body.replaceChildren(...(ids.length === 0
    ? [el("tr", {}, el("td", { colspan: 8, class: "empty" }, "no automated judge has judged yet"))]
    : ids.map((id) => {
      const u = j.totals[id];
      const verdicts = u.calls - u.failures;
      return el("tr", { "data-judge": id },
        el("td", {}, id),
        el("td", {}, fmtNumber(u.calls)),
        el("td", {}, fmtNumber(u.failures)),
        el("td", {}, verdicts > 0 ? fmtNumber(Math.round(u.latency_ms / verdicts)) + " ms" : "–"),
        el("td", {}, fmtNumber(u.requests)),
        el("td", {}, fmtNumber(u.prompt_tokens)),
        el("td", {}, fmtNumber(u.completion_tokens)),
        el("td", {}, u.votes > 0 ? fmtPercent(u.votes_agreed / u.votes) + " of " + fmtNumber(u.votes) : "–"),
      );
    })));
  document.getElementById("judge-charts").replaceChildren(
    lineChart({
      id: "judge_calls",
      title: "Judge calls per " + per,
      xLabel,
      yLabel: "calls / " + unit,
      xs: j.at,
      series: judgeSeries(j, (s, i) => (s.calls[i] === 0 ? null : s.calls[i])),
      xKind: "time",
      yMin: 0,
      empty: "no judge calls in this window",
    }),
    lineChart({
      id: "judge_failures",
      title: "Judge failure rate per " + per,
      xLabel,
      yLabel: "failed / calls",
      xs: j.at,
      series: judgeSeries(j, (s, i) => (s.calls[i] === 0 ? null : s.failures[i] / s.calls[i])),
      xKind: "time",
      yFormat: fmtPercent,
      yMin: 0,
      yMax: 1,
      empty: "no judge calls in this window",
    }),
    lineChart({
      id: "judge_latency",
      title: "Mean judge latency per " + per,
      xLabel,
      yLabel: "ms per verdict",
      xs: j.at,
      series: judgeSeries(j, (s, i) => {
        const verdicts = s.calls[i] - s.failures[i];
        return verdicts === 0 ? null : s.latency_ms[i] / verdicts;
      }),
      xKind: "time",
      yMin: 0,
      empty: "no verdicts in this window",
    }),
    lineChart({
      id: "judge_tokens",
      title: "Judge tokens per " + per,
      xLabel,
      yLabel: "tokens / " + unit,
      xs: j.at,
      series: judgeSeries(j, (s, i) => {
        const n = s.prompt_tokens[i] + s.completion_tokens[i];
        return n === 0 ? null : n;
      }),
      xKind: "time",
      yMin: 0,
      empty: "no endpoint reported token usage in this window",
    }),
    lineChart({
      id: "member_agreement",
      title: "Ensemble members: agreement with the verdict per " + per,
      xLabel,
      yLabel: "share of votes",
      xs: j.at,
      series: judgeSeries(j, (s, i) => (s.votes[i] === 0 ? null : s.votes_agreed[i] / s.votes[i])),
      xKind: "time",
      yFormat: fmtPercent,
      yMin: 0,
      yMax: 1,
      empty: "no ensemble votes in this window",
    }),
  );
}

function renderLatest(d) {
  const body = document.querySelector("#latest tbody");
  if (d.latest.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "empty" }, "no pairs yet")));
    return;
  }
  body.replaceChildren(...d.latest.map((p) => {
    const v = p.verdict;
    const judge = v ? v.judge.kind + ":" + v.judge.id + (v.annotator ? " (" + v.annotator + ")" : "") : "–";
    return el("tr", { "data-pair": p.id },
      el("td", { title: new Date(p.created_at).toISOString() }, fmtClock(p.created_at)),
      el("td", {}, el("span", { class: "status " + p.status }, p.status)),
      el("td", { class: "text" }, p.prompt),
      el("td", { class: "text" + (p.chosen === "a" ? " chosen" : "") }, p.a),
      el("td", { class: "text" + (p.chosen === "b" ? " chosen" : "") }, p.b),
      el("td", { class: "verdict", title: v && v.reason ? v.reason : null }, v ? v.choice : "–"),
      el("td", {}, judge),
      el("td", {}, !v || v.agreed === null ? "–" : v.agreed ? "yes" : "no"),
      el("td", {}, v && v.latency_ms !== null ? fmtNumber(Math.round(v.latency_ms)) + " ms" : "–"),
    );
  }));
}

async function refresh() {
  clearTimeout(timer);
  const error = document.getElementById("error");
  const mine = ++refreshes;
  try {
    const minutes = document.getElementById("window").value;
    const response = await api("/v1/dashboard?pairs=20" + (minutes ? "&minutes=" + minutes : ""));
    const body = await response.json();
    if (mine !== refreshes) return;
    if (!response.ok) throw new Error(body && body.error ? body.error.message : "HTTP " + response.status);
    renderCards(body);
    renderTraining(body);
    renderFlow(body);
    renderJudges(body);
    renderLatest(body);
    error.textContent = "";
    document.getElementById("updated").textContent = "updated " + fmtClock(body.now) + " · every 5 s";
  } catch (err) {
    if (err instanceof KeyRefused || mine !== refreshes) return; // the key form is showing, or a newer refresh runs
    error.textContent = "Cannot refresh the dashboard: " + err.message;
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

takeKeyFromFragment();
setupSmoothing();
setupWindow();
setupKeyForm(refresh);
refresh();
`;

/** The dashboard page. */
export const DASHBOARD_PAGE: StaticPage = htmlPage({
  title: "Online DPO · dashboard",
  css: CHART_CSS + CSS,
  body: BODY,
  script: CHART_SCRIPT + SCRIPT,
});
