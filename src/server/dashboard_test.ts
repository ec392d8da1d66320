import assert from "node:assert/strict";
import { loadModel } from "../model/io/checkpoint.ts";
import { fixturePath, useBackend } from "../model/_test_utils.ts";
import {
  activityKey,
  evalKey,
  judgeActivityKey,
  policyPointerKey,
  trainerStatusKey,
  trainMetricsKey,
} from "../store/keys.ts";
import { FakeClock, sampledInput } from "../store/_test_helpers.ts";
import { type ActivityKind, MINUTE_MS, minuteOf, PairStore } from "../store/pairs.ts";
import { BUCKET_MINUTES, chooseBuckets, MAX_BUCKETS, sumIntoBuckets } from "./_timeline.ts";
import { createApp } from "./app.ts";
import { PolicyHolder } from "./policy.ts";

const KEY = "dashboard-test-api-key";
const LABEL = "dashboard-test-label-key";

async function setup() {
  await useBackend("wasm");
  const kv = await Deno.openKv(":memory:");
  const clock = new FakeClock(Date.UTC(2025, 5, 1, 12, 0, 30));
  const store = new PairStore(kv, { now: clock.now });
  const loaded = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const policy = new PolicyHolder({ model: loaded.model, tokenizer: loaded.tokenizer, version: 2 });
  const app = createApp({ store, policy, apiKeys: [KEY], labelKeys: [LABEL], now: clock.now });
  const call = (method: string, path: string, key: string | null, body?: unknown) =>
    app.request(path, {
      method,
      headers: {
        ...(key === null ? {} : { authorization: `Bearer ${key}` }),
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  const close = () => {
    policy.dispose();
    kv.close();
  };
  return { app, kv, store, clock, call, close };
}

Deno.test("label keys: only the dashboard, pair reads and feedback; pages need no key", async () => {
  const { store, call, close } = await setup();
  try {
    const { pair } = await store.create(sampledInput());
    assert.equal((await call("GET", "/v1/dashboard", LABEL)).status, 200);
    assert.equal((await call("GET", "/v1/pairs?status=awaiting_judgment", LABEL)).status, 200);
    assert.equal((await call("GET", `/v1/pairs/${pair.id}`, LABEL)).status, 200);
    const forbidden = [
      ["POST", "/v1/pairs", { prompt: "x" }],
      ["POST", "/v1/preferences", { prompt: "p", chosen: "a", rejected: "b" }],
      ["GET", "/v1/stats"],
      ["GET", "/v1/export"],
      ["GET", "/metrics"],
      ["POST", "/v1/chat/completions", { messages: [{ role: "user", content: "hi" }] }],
    ] as const;
    for (const [method, path, body] of forbidden) {
      const res = await call(method, path, LABEL, body);
      assert.equal(res.status, 403, `${method} ${path}`);
      assert.equal((await res.json()).error.code, "forbidden");
    }
    const feedback = await call("POST", `/v1/pairs/${pair.id}/feedback`, LABEL, { choice: "b", annotator: "ann" });
    assert.equal(feedback.status, 200);
    assert.equal((await store.get(pair.id))!.verdict!.annotator, "ann");
    // Full keys still work everywhere; unknown keys nowhere.
    assert.equal((await call("GET", "/v1/stats", KEY)).status, 200);
    assert.equal((await call("GET", "/v1/dashboard", KEY)).status, 200);
    assert.equal((await call("GET", "/v1/dashboard", "nope-nope")).status, 401);
    assert.equal((await call("GET", "/v1/dashboard", null)).status, 401);

    for (const path of ["/", "/label"]) {
      const res = await call("GET", path, null);
      assert.equal(res.status, 200, path);
      assert.match(res.headers.get("content-type")!, /^text\/html/);
      const csp = res.headers.get("content-security-policy")!;
      assert.match(csp, /script-src 'sha256-[A-Za-z0-9+/]+=*'/);
      assert.match(csp, /default-src 'none'/);
      const html = await res.text();
      const script = /<script>([\s\S]*)<\/script>/.exec(html)![1]!;
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(script)));
      assert.ok(csp.includes(`'sha256-${btoa(String.fromCharCode(...digest))}'`), "the CSP allows exactly the script");
      const outside = html.replaceAll('"http://www.w3.org/2000/svg"', "");
      assert.doesNotMatch(outside, /innerHTML|https?:\/\//, "no markup from strings, nothing loaded from elsewhere");
    }
  } finally {
    close();
  }
});

Deno.test("GET /v1/dashboard: downsampled metrics, evals, activity, versions and latest pairs", async () => {
  const { kv, store, clock, call, close } = await setup();
  try {
    const t0 = clock.t - 3_600_000;
    // 1,000 steps, one a second; loss = step, accuracy alternating 0 and 1; step 500 has a non-finite loss.
    for (let s = 0; s < 1000; s += 100) {
      const op = kv.atomic();
      for (let step = s + 1; step <= s + 100; step++) {
        op.set(trainMetricsKey(t0 + step * 1000, step), {
          step,
          loss: step === 500 ? NaN : step,
          "rewards/accuracies": step % 2,
          "rewards/margins": 0.5,
          "objective/kl": 0.01 * step,
          skipped: false,
        });
      }
      await op.commit();
    }
    await kv.set(trainMetricsKey(t0 + 500, 0), "not a step record");
    for (const version of [1, 2, 3]) {
      await kv.set(evalKey(version), {
        version,
        prompts: 200,
        accuracy: 0.2 + 0.1 * version,
        base_accuracy: 0.245,
        win_rate_vs_base: 0.5 + 0.05 * version,
        at: t0 + version,
        seconds: 3,
      });
    }
    await kv.set(trainerStatusKey(), { owner: "w1", step: 1000, policy_version: 3, ref_version: 2, updated_at: t0 });
    await kv.set(policyPointerKey(), { version: 3, sha256: "a".repeat(64), storage: "dir", switchedAt: t0 });
    const pairs = [];
    for (let i = 0; i < 3; i++) pairs.push((await store.create(sampledInput({ prompt: `p${i}` }))).pair);
    clock.advance(60_000);
    await store.recordVerdict(pairs[0]!.id, { choice: "b", judge: { kind: "hf", id: "hf:j" }, agreed: true });
    await store.recordVerdict(pairs[1]!.id, { choice: "tie", judge: { kind: "hf", id: "hf:j" }, agreed: false });

    const res = await call("GET", "/v1/dashboard?points=100&minutes=5&pairs=2", LABEL);
    assert.equal(res.status, 200);
    const d = await res.json();
    assert.deepEqual(d.policy, { serving: 2, current: 3, switched_at: t0, reference: 2 });
    assert.equal(d.trainer.owner, "w1");
    assert.deepEqual(d.pairs, {
      awaiting_judgment: 1,
      labeled: 1,
      tie: 1,
      expired: 0,
      trained: 0,
      stale: 0,
      rejected: 0,
      judge_failed: 0,
      identical: 0,
    });

    const m = d.metrics;
    assert.deepEqual(m.names, ["loss", "rewards/accuracies", "rewards/margins", "objective/kl"]);
    assert.equal(m.steps_read, 1000);
    assert.equal(m.truncated, false);
    assert.equal(m.step.length, 100);
    assert.equal(m.step[0], 10);
    assert.equal(m.step[99], 1000);
    assert.equal(m.at[99], t0 + 1000_000);
    assert.equal(m.series.loss[0], 5.5); // mean of steps 1..10
    assert.equal(m.series.loss[49], (491 + 492 + 493 + 494 + 495 + 496 + 497 + 498 + 499) / 9, "NaN left out");
    assert.equal(m.series["rewards/accuracies"][0], 0.5);

    const limited = await (await call("GET", `/v1/dashboard?since=${t0 + 901_000}&limit=50`, KEY)).json();
    assert.deepEqual([limited.metrics.steps_read, limited.metrics.truncated], [50, true]);
    assert.deepEqual([limited.metrics.step[0], limited.metrics.step.at(-1)], [951, 1000], "the newest steps");
    const since = await (await call("GET", `/v1/dashboard?since=${t0 + 901_000}`, KEY)).json();
    assert.deepEqual([since.metrics.step[0], since.metrics.step.length, since.metrics.truncated], [901, 100, false]);

    assert.deepEqual(d.evals.map((e: { version: number }) => e.version), [1, 2, 3]);
    assert.deepEqual([d.window.minutes, d.window.bucket_minutes, d.window.first_activity], [5, 1, null]);
    assert.equal(d.activity.at.length, 5);
    assert.equal(d.activity.at.at(-1), clock.t - (clock.t % 60_000));
    assert.deepEqual(d.activity.created, [0, 0, 0, 3, 0]);
    assert.deepEqual(d.activity.labeled, [0, 0, 0, 0, 1]);
    assert.deepEqual(d.activity.tie, [0, 0, 0, 0, 1]);
    assert.deepEqual([d.activity.agreed.at(-1), d.activity.disagreed.at(-1)], [1, 1]);
    // The judge's calls, from the same verdicts, in total and in their minute.
    assert.deepEqual([d.judges.totals["hf:j"].calls, d.judges.totals["hf:j"].failures], [2, 0]);
    assert.deepEqual(d.judges.at, d.activity.at);
    assert.deepEqual(d.judges.series["hf:j"].calls, [0, 0, 0, 0, 2]);

    assert.deepEqual(d.latest.map((p: { prompt: string }) => p.prompt), ["p2", "p1"]);
    const tie = d.latest[1];
    assert.equal(tie.status, "tie");
    assert.deepEqual([tie.verdict.choice, tie.verdict.agreed, tie.verdict.judge.kind, tie.chosen], [
      "tie",
      false,
      "hf",
      null,
    ]);

    const bad422 = ["points=1", "limit=0", "minutes=100000", "minutes=4321", "minutes=0", "since=-1", "pairs=101"];
    for (const bad of [...bad422, "limit=abc"]) {
      const r = await call("GET", `/v1/dashboard?${bad}`, KEY);
      assert.equal(r.status, 422, bad);
    }
  } finally {
    close();
  }
});

Deno.test("GET /v1/dashboard: an empty store gives empty series, not errors", async () => {
  const { call, clock, close } = await setup();
  try {
    const d = await (await call("GET", "/v1/dashboard", KEY)).json();
    assert.deepEqual(d.metrics, { names: [], step: [], at: [], series: {}, steps_read: 0, truncated: false });
    assert.deepEqual([d.evals, d.latest, d.trainer, d.policy.current, d.policy.reference], [[], [], null, null, null]);
    // Nothing counted: the whole run is the current minute, one bucket of zeros.
    assert.deepEqual(d.window, {
      from: minuteOf(clock.t),
      to: minuteOf(clock.t) + MINUTE_MS,
      bucket_minutes: 1,
      minutes: null,
      first_activity: null,
      retention_ms: 3 * 24 * 3600_000,
    });
    assert.deepEqual([d.activity.at, d.activity.created, d.judges.at, d.judges.series], [
      [minuteOf(clock.t)],
      [0],
      [minuteOf(clock.t)],
      {},
    ]);
  } finally {
    close();
  }
});

Deno.test("GET /v1/dashboard: KTO steps on thumbs are their own series, beside the DPO steps", async () => {
  const { store, clock, call, close } = await setup();
  try {
    await store.records.recordStep(clock.t - 2000, 1, { step: 1, loss: 0.69, "rewards/accuracies": 0.5 });
    await store.records.recordStep(clock.t - 1000, 2, { step: 2, "kto/loss": 0.5, "kto/kl": 0.01, grad_norm: 1 });
    const d = await (await call("GET", "/v1/dashboard", KEY)).json();
    assert.deepEqual(d.metrics.names, ["loss", "rewards/accuracies", "grad_norm", "kto/loss", "kto/kl"]);
    assert.deepEqual(d.metrics.series["kto/loss"], [null, 0.5], "no KTO value at the DPO step");
    assert.deepEqual(d.metrics.series.loss, [0.69, null], "the DPO loss is not the KTO loss");
  } finally {
    close();
  }
});

/** Adds `n` to the activity counter of `kind` in the minute holding `at`, as a transition's commit does. */
async function countAt(kv: Deno.Kv, at: number, kind: ActivityKind, n: number) {
  await kv.atomic().sum(activityKey(minuteOf(at), kind), BigInt(n)).commit();
}

Deno.test("time axis: bucket sizes keep at most 180 points, each on a multiple of its size; sums are kept", () => {
  const t = Date.UTC(2025, 5, 1, 12, 7);
  const cases: [number, number][] = [
    [0, 1], // one minute
    [179, 1], // 180 minutes: one a minute
    [180, 2], // 181 minutes
    [5 * 60, 2],
    [24 * 60 - 1, 10], // the last 24 h
    [3 * 24 * 60, 30], // what the store keeps
  ];
  for (const [span, size] of cases) {
    const buckets = chooseBuckets(t - span * MINUTE_MS, t);
    assert.equal(buckets.minutes, size, `${span + 1} minutes`);
    assert.ok(buckets.starts.length <= MAX_BUCKETS);
    assert.ok(buckets.starts.every((s) => s % (size * MINUTE_MS) === 0), "aligned on the bucket size");
    assert.ok(buckets.starts[0]! <= t - span * MINUTE_MS && buckets.starts.at(-1)! <= t);
    assert.ok(buckets.starts.at(-1)! + size * MINUTE_MS > t, "the last bucket holds the last minute");
  }
  assert.ok(BUCKET_MINUTES.every((m) => (24 * 60) % m === 0), "buckets never straddle a UTC midnight");

  // 12:03 to 12:17 in 5-minute buckets (12:00, 12:05, 12:10, 12:15): partial first and last buckets.
  const first = Date.UTC(2025, 5, 1, 12, 3);
  const values = Array.from({ length: 15 }, (_, i) => i + 1);
  const buckets = { starts: [0, 5, 10, 15].map((m) => Date.UTC(2025, 5, 1, 12, m)), minutes: 5 };
  assert.deepEqual(sumIntoBuckets(values, first, buckets), [
    1 + 2,
    3 + 4 + 5 + 6 + 7,
    8 + 9 + 10 + 11 + 12,
    13 + 14 + 15,
  ]);
});

Deno.test("GET /v1/dashboard: by default the time axis spans the run, one point a minute for a short run", async () => {
  const { store, clock, call, close } = await setup();
  try {
    const t0 = clock.t;
    const { pair } = await store.create(sampledInput());
    clock.advance(20 * MINUTE_MS);
    await store.recordVerdict(pair.id, { choice: "a", judge: { kind: "hf", id: "hf:j" }, agreed: true });
    const d = await (await call("GET", "/v1/dashboard", KEY)).json();
    assert.deepEqual([d.window.minutes, d.window.bucket_minutes, d.window.first_activity], [null, 1, minuteOf(t0)]);
    assert.equal(d.window.from, minuteOf(t0));
    assert.equal(d.window.to, minuteOf(clock.t) + MINUTE_MS);
    assert.equal(d.activity.at.length, 21, "from the first pair's minute to now");
    assert.deepEqual([d.activity.at[0], d.activity.at.at(-1)], [minuteOf(t0), minuteOf(clock.t)]);
    assert.deepEqual([d.activity.created[0], d.activity.labeled.at(-1), d.judges.series["hf:j"].calls.at(-1)], [
      1,
      1,
      1,
    ]);
    assert.deepEqual(d.judges.at, d.activity.at);
  } finally {
    close();
  }
});

Deno.test("GET /v1/dashboard: a long run is summed into coarser buckets, as far as the counters are kept", async () => {
  const { kv, clock, call, close } = await setup();
  try {
    const now = clock.t; // 2025-06-01 12:00:30 UTC
    const start = now - 51 * 3600_000; // 2025-05-30 09:00:30
    await countAt(kv, now - 4 * 24 * 3600_000, "created", 100); // older than the 3 days kept
    await countAt(kv, start, "created", 3);
    await countAt(kv, start + 10 * MINUTE_MS, "created", 2); // the same 30-minute bucket
    await countAt(kv, start + 40 * MINUTE_MS, "labeled", 4);
    await countAt(kv, now, "created", 1);
    await kv.atomic()
      .sum(judgeActivityKey(minuteOf(start + 40 * MINUTE_MS), "hf:j", "calls"), 5n)
      .sum(judgeActivityKey(minuteOf(start + 40 * MINUTE_MS), "hf:j", "failures"), 1n)
      .commit();

    const d = await (await call("GET", "/v1/dashboard", KEY)).json();
    assert.deepEqual([d.window.minutes, d.window.bucket_minutes, d.window.first_activity], [null, 30, minuteOf(start)]);
    assert.equal(d.window.from, Date.UTC(2025, 4, 30, 9, 0));
    assert.equal(d.activity.at.length, 2 * 51 + 1, "09:00 on May 30 to 12:00 on June 1, 30 minutes a point");
    assert.ok(d.activity.at.every((t: number, i: number) => t === d.window.from + i * 30 * MINUTE_MS));
    assert.deepEqual(d.activity.created.slice(0, 2), [5, 0]);
    assert.deepEqual(d.activity.labeled.slice(0, 2), [0, 4]);
    assert.equal(d.activity.created.at(-1), 1, "the current minute is in the last bucket");
    assert.equal(d.activity.created.reduce((a: number, n: number) => a + n, 0), 6, "nothing older than kept");
    assert.deepEqual(d.judges.series["hf:j"].calls.slice(0, 3), [0, 5, 0]);
    assert.deepEqual(d.judges.series["hf:j"].failures.slice(0, 3), [0, 1, 0]);

    // A later read (the settled minutes come from memory) sees what was counted since, and drops what ages out.
    clock.advance(2 * 3600_000);
    await countAt(kv, clock.t, "trained", 7);
    const later = await (await call("GET", "/v1/dashboard", KEY)).json();
    assert.equal(later.window.first_activity, minuteOf(start));
    assert.deepEqual([later.activity.created[0], later.activity.trained.at(-1)], [5, 7]);
    clock.advance(19 * 3600_000 + 20 * MINUTE_MS); // 3 days on from 20 minutes after the start
    const aged = await (await call("GET", "/v1/dashboard", KEY)).json();
    assert.equal(aged.window.first_activity, minuteOf(start + 40 * MINUTE_MS));
    assert.equal(aged.activity.created.reduce((a: number, n: number) => a + n, 0), 1);
  } finally {
    close();
  }
});

Deno.test("GET /v1/dashboard: ?minutes=N overrides the run: the last N minutes, bucketed to fit", async () => {
  const { kv, clock, call, close } = await setup();
  try {
    const now = clock.t;
    await countAt(kv, now - 30 * 3600_000, "created", 9); // outside both windows
    await countAt(kv, now - 90 * MINUTE_MS, "created", 4); // in the last day only
    await countAt(kv, now - 30 * MINUTE_MS, "created", 2);
    await countAt(kv, now, "tie", 1);

    const hour = await (await call("GET", "/v1/dashboard?minutes=60", KEY)).json();
    assert.deepEqual([hour.window.minutes, hour.window.bucket_minutes, hour.window.first_activity], [60, 1, null]);
    assert.equal(hour.activity.at.length, 60);
    assert.deepEqual([hour.activity.at[0], hour.activity.at.at(-1)], [minuteOf(now) - 59 * MINUTE_MS, minuteOf(now)]);
    assert.deepEqual([hour.activity.created[29], hour.activity.tie[59]], [2, 1]);
    assert.equal(hour.activity.created.reduce((a: number, n: number) => a + n, 0), 2);

    const day = await (await call("GET", "/v1/dashboard?minutes=1440", KEY)).json();
    assert.deepEqual([day.window.minutes, day.window.bucket_minutes], [1440, 10]);
    assert.ok(day.activity.at.length <= MAX_BUCKETS && day.activity.at.length >= 144);
    assert.equal(day.activity.created.reduce((a: number, n: number) => a + n, 0), 6);
    assert.equal(day.activity.tie.at(-1), 1);

    const kept = await (await call("GET", "/v1/dashboard?minutes=4320", KEY)).json();
    assert.deepEqual([kept.window.bucket_minutes, kept.activity.created.reduce((a: number, n: number) => a + n, 0)], [
      30,
      15,
    ]);
  } finally {
    close();
  }
});
