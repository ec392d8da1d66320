import assert from "node:assert/strict";
import { loadModel } from "../model/io/checkpoint.ts";
import { fixturePath, useBackend } from "../model/_test_utils.ts";
import { evalKey, policyPointerKey, trainerStatusKey, trainMetricsKey } from "../store/keys.ts";
import { FakeClock, sampledInput } from "../store/_test_helpers.ts";
import { PairStore } from "../store/pairs.ts";
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
    assert.equal(d.activity.minutes.length, 5);
    assert.equal(d.activity.minutes.at(-1), clock.t - (clock.t % 60_000));
    assert.deepEqual(d.activity.created, [0, 0, 0, 3, 0]);
    assert.deepEqual(d.activity.labeled, [0, 0, 0, 0, 1]);
    assert.deepEqual(d.activity.tie, [0, 0, 0, 0, 1]);
    assert.deepEqual([d.activity.agreed.at(-1), d.activity.disagreed.at(-1)], [1, 1]);
    // The judge's calls, from the same verdicts, in total and in their minute.
    assert.deepEqual([d.judges.totals["hf:j"].calls, d.judges.totals["hf:j"].failures], [2, 0]);
    assert.deepEqual(d.judges.minutes, d.activity.minutes);
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

    for (const bad of ["points=1", "limit=0", "minutes=100000", "since=-1", "pairs=101", "limit=abc"]) {
      const r = await call("GET", `/v1/dashboard?${bad}`, KEY);
      assert.equal(r.status, 422, bad);
    }
  } finally {
    close();
  }
});

Deno.test("GET /v1/dashboard: an empty store gives empty series, not errors", async () => {
  const { call, close } = await setup();
  try {
    const d = await (await call("GET", "/v1/dashboard", KEY)).json();
    assert.deepEqual(d.metrics, { names: [], step: [], at: [], series: {}, steps_read: 0, truncated: false });
    assert.deepEqual([d.evals, d.latest, d.trainer, d.policy.current, d.policy.reference], [[], [], null, null, null]);
    assert.equal(d.activity.minutes.length, 60);
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
