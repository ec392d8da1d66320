/**
 * The dashboard and labeling pages in a real browser: Debian's Chromium driven by playwright-core, against
 * the real app served over loopback on a KV file. Screenshots go to test-artifacts/. Without Chromium the
 * test is skipped with a notice, or fails when DPO_REQUIRE_BROWSER=1 (CI installs it, so it must run).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium, type Page } from "playwright-core";
import { loadModel } from "../src/model/io/checkpoint.ts";
import { initBackend } from "../src/model/kernels/backend.ts";
import { createApp } from "../src/server/app.ts";
import { PolicyHolder } from "../src/server/policy.ts";
import { activityKey, evalKey, policyPointerKey, trainerStatusKey, trainMetricsKey } from "../src/store/keys.ts";
import { MINUTE_MS, minuteOf, type Pair, PairStore } from "../src/store/pairs.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const ARTIFACTS = join(ROOT, "test-artifacts");
const CHROMIUM = Deno.env.get("DPO_CHROMIUM") ?? "/usr/bin/chromium";
const KEY = "pages-test-api-key";
const LABEL_KEY = "pages-test-label-key";
const STEPS = 120;
// The run's first counted minute: pairs created this long before the rest of the seed.
const RUN_MS = 190 * MINUTE_MS;
// The time charts: one axis, the same window.
const TIME_CHARTS = [
  "throughput",
  "agreement",
  "judge_calls",
  "judge_failures",
  "judge_latency",
  "judge_tokens",
  "member_agreement",
];

const hasChromium = await Deno.stat(CHROMIUM).then((s) => s.isFile, () => false);
const required = Deno.env.get("DPO_REQUIRE_BROWSER") === "1";
if (!hasChromium && !required) {
  console.log(
    `pages_test: skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set DPO_CHROMIUM); ` +
      "DPO_REQUIRE_BROWSER=1 makes this a failure",
  );
}

/**
 * Training steps, evaluations, trainer status and pointer as the trainer writes them; pairs in every state; and
 * the counters of two pairs created 3 h 10 min earlier, where the run's time axis starts.
 */
async function seed(kv: Deno.Kv, store: PairStore) {
  // The throughput chart's last point is the current minute: seed early in a minute so that it is still the
  // current one when the page draws it.
  const intoMinute = Date.now() % 60_000;
  if (intoMinute > 45_000) await new Promise((resolve) => setTimeout(resolve, 60_100 - intoMinute));
  const now = Date.now();
  const op = kv.atomic();
  for (let step = 1; step <= STEPS; step++) {
    op.set(trainMetricsKey(now - (STEPS - step) * 1000, step), {
      step,
      loss: 0.6931 * Math.exp(-step / 60) + 0.05 * Math.sin(step / 3),
      "rewards/accuracies": Math.min(1, 0.5 + step / 250),
      "rewards/margins": step / 100,
      "objective/kl": step / 1000,
      "rewards/chosen": step / 200,
      "rewards/rejected": -step / 200,
      grad_norm: 1 + 0.5 * Math.cos(step / 10),
      learning_rate: 1e-5,
      skipped: false,
      skipped_steps: 0,
      ref_version: step > 60 ? 2 : 1,
    });
  }
  op.sum(activityKey(minuteOf(now - RUN_MS), "created"), 2n);
  await op.commit();
  for (const version of [1, 2, 3, 4]) {
    await kv.set(evalKey(version), {
      version,
      prompts: 200,
      accuracy: 0.2 + version / 10,
      base_accuracy: 0.245,
      win_rate_vs_base: 0.5 + version / 20,
      at: now,
      seconds: 2,
    });
  }
  await kv.set(trainerStatusKey(), {
    owner: "trainer-1",
    step: STEPS,
    policy_version: 4,
    ref_version: 2,
    updated_at: now,
  });
  await kv.set(policyPointerKey(), { version: 4, sha256: "0".repeat(64), storage: "dir", switchedAt: now - 90_000 });

  // Two candidates judged by the promotion gate: the first promoted as v4, the second refused.
  const gate = (minutes: number, candidate: number, promoted: boolean) => ({
    at: now - minutes * 60_000,
    step: 100 + minutes,
    served_version: 3,
    prompts: 300,
    candidate_accuracy: candidate,
    served_accuracy: 0.55,
    mean_difference: candidate - 0.55,
    lower_bound: candidate - 0.58,
    margin: 0.02,
    confidence: 0.95,
    promoted,
    ...(promoted ? { version: 4 } : {}),
  });
  await store.records.recordGate(gate(5, 0.6, true));
  await store.records.recordGate(gate(2, 0.41, false));

  const create = async (prompt: string, a: string, b: string) =>
    (await store.create({ prompt, promptText: prompt, responses: [a, b], policyVersion: 4 })).pair;
  const judged = [
    await create("What is 12+30?", " 42", " 43"),
    await create("What is 7+8?", " 15", " 16"),
  ];
  await store.recordVerdict(judged[0]!.id, {
    choice: "a",
    judge: { kind: "hf", id: "hf:judge" },
    agreed: true,
    latencyMs: 812,
  });
  // An ensemble split a / b / tie: a tie by majority, with each member's vote and the LLMs' usage.
  const usage = { requests: 2, promptTokens: 120, completionTokens: 30 };
  await store.recordVerdict(judged[1]!.id, {
    choice: "tie",
    judge: { kind: "ensemble", id: "panel" },
    agreed: false,
    latencyMs: 400,
    usage: { requests: 4, promptTokens: 240, completionTokens: 60 },
    votes: [
      { judgeId: "arithmetic", choice: "tie", latencyMs: 1 },
      { judgeId: "hf:a", choice: "a", latencyMs: 390, usage },
      { judgeId: "hf:b", choice: "b", latencyMs: 380, usage },
    ],
  });
  // Untrusted text: it must show as text, never as markup.
  const hostile = await create(`<img src=x onerror="window.__xss=1">What is 1+1?`, " <b>2</b>", " 3 & 4");
  const pending = [
    await create("What is 20+22?", " 42", " 44"),
    await create("What is 5+5?", " 10", " 11"),
  ];
  return { judged, hostile, pending, runStart: minuteOf(now - RUN_MS) };
}

async function text(page: Page, selector: string): Promise<string> {
  return (await page.locator(selector).first().textContent())?.trim() ?? "";
}

/** The points of a chart's series: its polyline's point count as drawn. */
async function pointsOf(page: Page, chart: string, series: string): Promise<number> {
  const polyline = page.locator(`section[data-chart="${chart}"] polyline[data-series="${series}"]`);
  const [declared, drawn] = await polyline.evaluate((p) => [p.getAttribute("data-points"), p.getAttribute("points")]);
  const count = drawn!.trim().split(/\s+/).length;
  assert.equal(Number(declared), count, `${chart}/${series}: data-points matches the polyline`);
  return count;
}

/** A time chart's x range (ms) and its tick labels, each with its time, its lines and where it is drawn. */
async function timeAxis(page: Page, chart: string) {
  const svg = page.locator(`section[data-chart="${chart}"] svg`);
  const [x0, x1] = (await svg.evaluate((e) => [e.getAttribute("data-x0"), e.getAttribute("data-x1")])).map(Number);
  const ticks = await svg.locator("text.tick.x").evaluateAll((texts) =>
    texts.map((text) => {
      const box = (text as unknown as { getBBox(): { x: number; width: number } }).getBBox();
      const lines = [...text.querySelectorAll("tspan")].map((line) => line.textContent ?? "");
      return { t: Number(text.getAttribute("data-t")), lines, left: box.x, right: box.x + box.width };
    })
  );
  return { x0: x0!, x1: x1!, ticks };
}

/**
 * Every time chart is drawn on the same window, ending in the current bucket, with 2 to 6 ticks inside it whose
 * labels do not overlap; the throughput chart has one point per `bucketMs` over it.
 */
async function checkTimeAxes(page: Page, bucketMs: number) {
  const axes = await Promise.all(TIME_CHARTS.map((chart) => timeAxis(page, chart)));
  for (const [i, axis] of axes.entries()) {
    const chart = TIME_CHARTS[i]!;
    assert.deepEqual([axis.x0, axis.x1], [axes[0]!.x0, axes[0]!.x1], `${chart}: the same window`);
    assert.ok(axis.ticks.length >= 2 && axis.ticks.length <= 6, `${chart}: ${axis.ticks.length} ticks`);
    for (const [j, tick] of axis.ticks.entries()) {
      assert.ok(tick.t >= axis.x0 && tick.t <= axis.x1, `${chart}: tick ${tick.lines} in the window`);
      assert.match(tick.lines[0]!, /^(\d\d:\d\d|[A-Z][a-z]{2} \d{1,2})$/, `${chart}: tick '${tick.lines}'`);
      const next = axis.ticks[j + 1];
      if (next) assert.ok(tick.right + 4 < next.left, `${chart}: tick labels ${tick.lines} and ${next.lines} apart`);
    }
  }
  const { x0, x1 } = axes[0]!;
  assert.ok(x1 <= Date.now() && x1 > Date.now() - 2 * bucketMs, "the last point is the current bucket");
  assert.equal(x0 % bucketMs, 0, "buckets start on multiples of their size");
  assert.equal(await pointsOf(page, "throughput", "created"), (x1 - x0) / bucketMs + 1);
  return axes[0]!;
}

/** Picks a time window in the select and waits for the charts drawn from its answer. */
async function pickWindow(page: Page, value: string, xLabel: string) {
  await page.locator("#window").selectOption(value);
  const label = page.locator('section[data-chart="throughput"] text.label.x');
  await label.filter({ hasText: new RegExp(`^${xLabel.replace(/[()]/g, "\\$&")}$`) }).waitFor();
}

async function pairStatus(path: string, id: string): Promise<Pair | null> {
  // A second handle on the file: what the page wrote is in KV, not in some cache of the server's.
  const kv = await Deno.openKv(path);
  try {
    return (await new PairStore(kv).get(id));
  } finally {
    kv.close();
  }
}

Deno.test({
  name: "pages in Chromium: the dashboard draws the seeded data; labeling by keyboard changes pairs in KV",
  ignore: !hasChromium && !required,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    if (!hasChromium) {
      throw new Error(
        `Cannot run the browser tests as DPO_REQUIRE_BROWSER=1 and Chromium is not at ${CHROMIUM}: ` +
          "apt-get install chromium (or set DPO_CHROMIUM to its path)",
      );
    }
    await Deno.mkdir(ARTIFACTS, { recursive: true });
    await initBackend("wasm");
    const dir = await Deno.makeTempDir({ prefix: "pages_test_" });
    const kvPath = join(dir, "dpo.kv");
    const kv = await Deno.openKv(kvPath);
    const store = new PairStore(kv);
    const loaded = await loadModel(join(ROOT, "tests/fixtures/gpt2_tiny"), { trainable: false });
    const policy = new PolicyHolder({ model: loaded.model, tokenizer: loaded.tokenizer, version: 4 });
    const app = createApp({ store, policy, apiKeys: [KEY], labelKeys: [LABEL_KEY] });
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
    const url = `http://127.0.0.1:${server.addr.port}`;
    let browser: Browser | undefined;
    try {
      const seeded = await seed(kv, store);
      browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
      // A time zone half an hour off UTC: time ticks must fall on round times of the browser's clock.
      const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, timezoneId: "Asia/Kolkata" });
      context.setDefaultTimeout(10_000);
      const errors: string[] = [];
      context.on("weberror", (e) => void errors.push(e.error().message));

      await t.step("dashboard: every chart drawn from the data, versions, latest pairs as text", async () => {
        const page = await context.newPage();
        page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
        await page.goto(`${url}/#key=${LABEL_KEY}`);
        await page.waitForSelector('section[data-chart="loss"] polyline');
        assert.doesNotMatch(page.url(), /key=/, "the key left the address bar");

        const charts = [
          ["loss", "loss", "loss"],
          ["accuracies", "rewards/accuracies", "rewards/accuracies"],
          ["margins", "rewards/margins", "rewards/margins"],
          ["kl", "objective/kl", "objective/kl"],
          ["rewards", "rewards/chosen", "reward"],
          ["rewards", "rewards/rejected", "reward"],
          ["grad_norm", "grad_norm", "grad_norm"],
        ] as const;
        for (const [chart, series, yLabel] of charts) {
          assert.equal(await pointsOf(page, chart, series), STEPS, chart);
          assert.equal(await text(page, `section[data-chart="${chart}"] text.label.x`), "optimizer step");
          assert.equal(await text(page, `section[data-chart="${chart}"] text.label.y`), yLabel);
          const ticks = await page.locator(`section[data-chart="${chart}"] text.tick`).count();
          assert.ok(ticks >= 4, `${chart} has axis ticks (${ticks})`);
        }
        // No axis reads like "-5.55e-17": a tick that is zero but for rounding noise shows as 0.
        for (const tick of await page.locator("text.tick").allTextContents()) {
          assert.doesNotMatch(tick, /e-\d/, `tick '${tick}'`);
        }
        assert.equal(await text(page, 'section[data-chart="margins"] b.last'), "1.2");
        // Raw values faint behind their smoothing; events marked on the step axis: a reference refresh
        // (step 61) and the two gate decisions (steps 105 and 102).
        const loss = 'section[data-chart="loss"]';
        assert.equal(
          await page.locator(`${loss} polyline[data-series="loss (raw)"]`).getAttribute("stroke-opacity"),
          "0.3",
        );
        assert.deepEqual(
          (await page.locator(`${loss} line[data-marker]`).evaluateAll((ls) =>
            ls.map((l) => l.getAttribute("data-marker"))
          ))
            .sort(),
          ["gate refused a candidate", "published v4 (gate passed)", "reference refreshed"],
        );
        const pointsAttr = (series: string) =>
          page.locator(`${loss} polyline[data-series="${series}"]`).getAttribute("points");
        assert.notEqual(await pointsAttr("loss"), await pointsAttr("loss (raw)"), "smoothed by default");
        await page.locator("#smoothing").fill("0");
        assert.equal(await pointsAttr("loss"), await pointsAttr("loss (raw)"), "smoothing 0 draws the raw values");
        assert.equal(await text(page, 'section[data-chart="accuracies"] b.last'), "98.0%");
        assert.equal(await text(page, 'section[data-chart="kl"] b.last'), "0.12");
        assert.equal(await text(page, 'section[data-chart="rewards"] b.last[data-series="rewards/rejected"]'), "-0.6");

        for (const series of ["accuracy", "base accuracy", "win rate vs base"]) {
          assert.equal(await pointsOf(page, "evals", series), 4, series);
        }
        assert.equal(await text(page, 'section[data-chart="evals"] b.last[data-series="accuracy"]'), "60.0%");
        assert.equal(await text(page, 'section[data-chart="evals"] b.last[data-series="win rate vs base"]'), "70.0%");
        // The time axis spans the run: from the bucket of the first pairs, 3 h 10 min ago, to now, one point
        // per 2 minutes (191 minutes do not fit in 180 points).
        const TWO_MINUTES = 2 * MINUTE_MS;
        const run = await checkTimeAxes(page, TWO_MINUTES);
        assert.equal(run.x0, Math.floor(seeded.runStart / TWO_MINUTES) * TWO_MINUTES, "the axis starts with the run");
        assert.ok(run.x1 - run.x0 >= RUN_MS - TWO_MINUTES, "and ends now");
        assert.ok(run.ticks.every((tick) => tick.lines[0]!.endsWith(":00")), "hourly ticks on the hour");
        assert.equal(await text(page, 'section[data-chart="throughput"] h3'), "Pairs per 2 minutes");
        assert.equal(await text(page, 'section[data-chart="throughput"] text.label.y'), "pairs / 2 min");
        assert.equal(
          await text(page, 'section[data-chart="throughput"] text.label.x'),
          "time (one point per 2 minutes)",
        );
        assert.equal(await text(page, 'section[data-chart="judge_calls"] h3'), "Judge calls per 2 minutes");
        assert.match(await text(page, "#window-note"), /^Whole run: since [A-Z][a-z]{2} \d+ \d\d:\d\d \(3 h 1\d min\)/);
        assert.match(await text(page, "#window-note"), /kept 3 days, so a longer run shows its last 3 days/);
        assert.equal(await text(page, 'section[data-chart="throughput"] b.last[data-series="created"]'), "5");
        assert.equal(await text(page, 'section[data-chart="throughput"] b.last[data-series="judged"]'), "2");
        assert.equal(await pointsOf(page, "agreement", "judge agreed"), 1);
        assert.equal(await text(page, 'section[data-chart="agreement"] b.last[data-series="judge agreed"]'), "50.0%");
        assert.equal(await text(page, 'section[data-chart="agreement"] b.last[data-series="ties"]'), "50.0%");

        // The last hour: one point a minute, the run's first pairs out of it.
        await pickWindow(page, "60", "time (one point a minute)");
        const hour = await checkTimeAxes(page, MINUTE_MS);
        assert.equal(await pointsOf(page, "throughput", "created"), 60, "one point a minute for an hour");
        assert.ok(hour.x0 > seeded.runStart);
        assert.ok(hour.ticks.every((tick) => /:[0-5]0$/.test(tick.lines[0]!)), "ticks every 10 minutes");
        assert.equal(await text(page, 'section[data-chart="throughput"] h3'), "Pairs per minute");
        assert.equal(await text(page, 'section[data-chart="throughput"] text.label.y'), "pairs / minute");
        assert.equal(await text(page, 'section[data-chart="throughput"] b.last[data-series="created"]'), "5");
        assert.match(await text(page, "#window-note"), /^Last 1 h · one point per minute/);
        // The last 24 h: 10 minutes a point; the axis crosses midnight, so the dates show under the times.
        await pickWindow(page, "1440", "time (one point per 10 minutes)");
        const day = await checkTimeAxes(page, 10 * MINUTE_MS);
        assert.ok(day.x1 - day.x0 >= (24 * 60 - 10) * MINUTE_MS && day.x0 < seeded.runStart);
        assert.ok(day.ticks.every((tick) => ["00:00", "06:00", "12:00", "18:00"].includes(tick.lines[0]!)));
        assert.ok(day.ticks.some((tick) => tick.lines.length === 2), "a date under a time");
        assert.equal(day.ticks[0]!.lines.length, 2, "the first tick has its date");
        await page.locator("#judge-charts").screenshot({ path: join(ARTIFACTS, "dashboard-24h.png") });
        assert.equal(await text(page, 'section[data-chart="judge_tokens"] text.label.y'), "tokens / 10 min");
        await page.reload();
        await page.waitForSelector('section[data-chart="throughput"] polyline');
        assert.equal(await page.locator("#window").inputValue(), "1440", "the choice is remembered");
        await pickWindow(page, "", "time (one point per 2 minutes)");

        const judgeRow = async (id: string) =>
          (await page.locator(`#judges tr[data-judge="${id}"] td`).allTextContents()).map((t) => t.trim());
        assert.deepEqual(await judgeRow("hf:judge"), ["hf:judge", "1", "0", "812 ms", "0", "0", "0", "–"]);
        assert.deepEqual(await judgeRow("panel"), ["panel", "1", "0", "400 ms", "4", "240", "60", "–"]);
        assert.deepEqual(await judgeRow("arithmetic"), ["arithmetic", "1", "0", "1 ms", "0", "0", "0", "100.0% of 1"]);
        assert.deepEqual((await judgeRow("hf:a")).at(-1), "0.0% of 1");
        assert.equal(await pointsOf(page, "member_agreement", "arithmetic"), 1);
        assert.equal(
          await text(page, 'section[data-chart="member_agreement"] b.last[data-series="arithmetic"]'),
          "100.0%",
        );
        assert.equal(await text(page, 'section[data-chart="member_agreement"] b.last[data-series="hf:b"]'), "0.0%");
        assert.equal(await text(page, 'section[data-chart="judge_calls"] b.last[data-series="panel"]'), "1");
        assert.equal(await text(page, 'section[data-chart="judge_tokens"] b.last[data-series="panel"]'), "300");
        assert.equal(
          await page.locator('section[data-chart="member_agreement"] polyline[data-series="panel"]').count(),
          0,
        );

        for (const [series, points] of [["promoted", 1], ["refused", 1], ["best served", 2]] as const) {
          assert.equal(await pointsOf(page, "gate", series), points, series);
        }
        assert.equal(await text(page, 'section[data-chart="gate"] b.last[data-series="refused"]'), "41.0%");
        assert.equal(await text(page, '[data-card="gate"] .value'), "1 / 1");

        assert.equal(await text(page, '[data-card="policy"] .value'), "v4");
        assert.equal(await text(page, '[data-card="reference"] .value'), "#2");
        assert.equal(await text(page, '[data-card="trainer"] .value'), "120");
        assert.equal(await text(page, '[data-card="awaiting_judgment"] .value'), "3");

        const rows = page.locator("#latest tbody tr");
        assert.equal(await rows.count(), 5);
        const all = [...seeded.judged, seeded.hostile, ...seeded.pending];
        for (const pair of all) assert.equal(await page.locator(`tr[data-pair="${pair.id}"]`).count(), 1);
        const hostile = page.locator(`tr[data-pair="${seeded.hostile.id}"]`);
        assert.equal(await hostile.locator("td.text").first().textContent(), seeded.hostile.prompt);
        assert.equal(await hostile.locator("td.text").nth(1).textContent(), " <b>2</b>");
        assert.equal(await page.locator("#latest img, #latest tbody b").count(), 0, "no markup from the data");
        assert.equal(await page.evaluate(() => (globalThis as { __xss?: number }).__xss), undefined);
        const first = page.locator(`tr[data-pair="${seeded.judged[0]!.id}"]`);
        assert.equal(await first.locator("td.chosen").textContent(), " 42");
        assert.equal(await first.locator("td").nth(7).textContent(), "yes");
        await page.screenshot({ path: join(ARTIFACTS, "dashboard.png"), fullPage: true });
        await page.close();
      });

      await t.step("label page: A by keyboard, a pair taken by someone else, tie, then the empty state", async () => {
        const page = await context.newPage();
        await page.goto(`${url}/label#key=${LABEL_KEY}`);
        const shown = async () => {
          await page.waitForSelector("#pair:not([hidden])");
          return (await page.locator("#pair").getAttribute("data-pair"))!;
        };
        const next = async (prev: string) => {
          await page.waitForSelector(`#pair:not([hidden]):not([data-pair="${prev}"]), #empty:not([hidden])`);
          return await shown();
        };
        const waitFor = async (id: string, status: string) => {
          for (let i = 0; i < 100; i++) {
            const pair = await pairStatus(kvPath, id);
            if (pair?.status === status) return pair;
            await new Promise((r) => setTimeout(r, 50));
          }
          throw new Error(`pair ${id} did not become ${status}`);
        };

        // Newest first: the two plain pending pairs, then the hostile one.
        let id = await shown();
        assert.equal(id, seeded.pending[1]!.id);
        assert.equal(await text(page, "#prompt"), "What is 5+5?");
        assert.equal(await page.locator("#textA").textContent(), " 10"); // A = candidates[0]
        assert.equal(await page.locator("#textB").textContent(), " 11");
        assert.match(await text(page, ".actions"), /A is better\s*A\s*1/);

        await page.keyboard.press("a"); // no annotator yet: refused with a notice, nothing sent
        assert.match(await text(page, "#notice"), /annotator/);
        await page.fill("#annotator", "alice");
        await page.keyboard.press("Escape"); // leaves the box so the keys are shortcuts again
        await page.keyboard.press("a");
        const labeled = await waitFor(id, "labeled");
        assert.deepEqual([labeled.chosen, labeled.verdict!.annotator, labeled.verdict!.judge.kind], [
          0,
          "alice",
          "human",
        ]);

        id = await next(id);
        assert.equal(id, seeded.pending[0]!.id);
        await page.screenshot({ path: join(ARTIFACTS, "label.png"), fullPage: true });
        // Someone else answers this pair first: the page says so and moves on.
        await store.recordVerdict(id, { choice: "b", judge: { kind: "human", id: "bob" }, annotator: "bob" });
        await page.keyboard.press("2");
        const taken = id;
        id = await next(id);
        assert.match(await text(page, "#notice"), /judged by someone else/);
        assert.equal((await pairStatus(kvPath, taken))!.verdict!.annotator, "bob", "no overwrite");

        assert.equal(id, seeded.hostile.id);
        assert.equal(await text(page, "#prompt"), seeded.hostile.prompt);
        assert.equal(await page.locator("#textA").textContent(), " <b>2</b>");
        assert.equal(await page.locator("#pair img, #pair .text b").count(), 0);
        await page.keyboard.press("t");
        const tie = await waitFor(id, "tie");
        assert.equal(tie.verdict!.annotator, "alice");

        await page.waitForSelector("#empty:not([hidden])");
        assert.match(await text(page, "#empty"), /Nothing awaits judgment/);
        assert.equal(await text(page, "#count"), "2 labeled");
        await page.screenshot({ path: join(ARTIFACTS, "label-empty.png") });
        await page.close();
      });

      await t.step("a wrong key in the fragment shows the key form; a good one entered there works", async () => {
        const page = await context.newPage();
        await page.goto(`${url}/#key=wrong-key`);
        await page.waitForSelector("#keyform:not([hidden])");
        assert.match(await text(page, "#keymsg"), /refused/);
        assert.equal(await page.locator('section[data-chart="loss"]').count(), 0);
        await page.screenshot({ path: join(ARTIFACTS, "key-form.png") });
        await page.fill("#keyinput", KEY);
        await page.press("#keyinput", "Enter");
        await page.waitForSelector('section[data-chart="loss"] polyline');
        assert.equal(await page.locator("#keyform").isHidden(), true);
        await page.close();
      });

      assert.deepEqual(errors, [], "no script errors in the pages");
    } finally {
      await browser?.close();
      await server.shutdown();
      policy.dispose();
      kv.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
