import assert from "node:assert/strict";
import { memoryStore, sampledInput } from "./_test_helpers.ts";
import { ACTIVITY_RETENTION_MS, MINUTE_MS, minuteOf } from "./activity.ts";
import { ConflictError } from "./errors.ts";
import { JUDGE_ACTIVITY_PREFIX } from "./keys.ts";

const hf = { kind: "hf", id: "hf:judge" } as const;
const panel = { kind: "ensemble", id: "panel" } as const;

Deno.test("judge usage: verdicts, failures and ensemble votes are counted per judge, in the verdict's commit", async () => {
  const { kv, store, clock } = await memoryStore();
  try {
    const t0 = clock.t;
    const pairs = [];
    for (let i = 0; i < 5; i++) pairs.push((await store.create(sampledInput())).pair);
    const usage = { requests: 3, promptTokens: 200, completionTokens: 40 };
    await store.recordVerdict(pairs[0]!.id, { choice: "a", judge: hf, latencyMs: 120, usage });
    await store.recordJudgeFailure(pairs[1]!.id, {
      error: "HTTP 503",
      maxAttempts: 5,
      backoffMs: 10,
      owner: "j",
      judgeId: "hf:judge",
    });
    clock.advance(MINUTE_MS);
    await store.recordVerdict(pairs[2]!.id, {
      choice: "b",
      judge: panel,
      latencyMs: 90,
      usage: { requests: 2, promptTokens: 100, completionTokens: 20 },
      votes: [
        { judgeId: "arithmetic", choice: "b", latencyMs: 1 },
        {
          judgeId: "hf:judge",
          choice: "a",
          latencyMs: 80,
          usage: { requests: 2, promptTokens: 100, completionTokens: 20 },
        },
        { judgeId: "hf:other", choice: "failed", latencyMs: 5, error: "HTTP 401" },
      ],
    });
    // A person's verdict is not a judge call; a refused verdict counts nothing.
    await store.recordVerdict(pairs[3]!.id, { choice: "a", judge: { kind: "human", id: "ann" }, annotator: "ann" });
    await assert.rejects(store.recordVerdict(pairs[0]!.id, { choice: "b", judge: hf, latencyMs: 1 }), ConflictError);

    const zero = {
      calls: 0,
      failures: 0,
      latency_ms: 0,
      requests: 0,
      prompt_tokens: 0,
      completion_tokens: 0,
      votes: 0,
      votes_agreed: 0,
    };
    assert.deepEqual(await store.judgeUsage(), {
      "hf:judge": {
        ...zero,
        calls: 3,
        failures: 1,
        latency_ms: 200,
        requests: 5,
        prompt_tokens: 300,
        completion_tokens: 60,
        votes: 1,
      },
      "panel": { ...zero, calls: 1, latency_ms: 90, requests: 2, prompt_tokens: 100, completion_tokens: 20 },
      "arithmetic": { ...zero, calls: 1, latency_ms: 1, votes: 1, votes_agreed: 1 },
      "hf:other": { ...zero, calls: 1, failures: 1 },
    });
    // The member votes are stored with the verdict.
    const judged = await store.get(pairs[2]!.id);
    assert.deepEqual(judged!.verdict!.votes!.map((v) => v.choice), ["b", "a", "failed"]);

    const activity = await store.judgeActivity({ from: t0, to: clock.t });
    assert.deepEqual(activity.minutes, [minuteOf(t0), minuteOf(t0) + MINUTE_MS]);
    assert.deepEqual(activity.judges["hf:judge"]!.calls, [2, 1]);
    assert.deepEqual(activity.judges["hf:judge"]!.failures, [1, 0]);
    assert.deepEqual(activity.judges["hf:judge"]!.votes_agreed, [0, 0]);
    assert.deepEqual(activity.judges["arithmetic"]!.votes_agreed, [0, 1]);
    assert.equal(activity.judges["ann"], undefined);
  } finally {
    kv.close();
  }
});

Deno.test("judge usage: per-minute counters past the retention are pruned with the activity counters", async () => {
  const { kv, store, clock } = await memoryStore();
  const minutes = async () => {
    const keys = new Set<number>();
    for await (const e of kv.list({ prefix: JUDGE_ACTIVITY_PREFIX })) keys.add(e.key[1] as number);
    return [...keys];
  };
  try {
    const { pair } = await store.create(sampledInput());
    await store.recordVerdict(pair.id, { choice: "a", judge: hf, latencyMs: 5 });
    const first = minuteOf(clock.t);
    await store.expirePending();
    assert.deepEqual(await minutes(), [first]);
    clock.advance(ACTIVITY_RETENTION_MS + MINUTE_MS);
    await store.expirePending();
    assert.deepEqual(await minutes(), []);
    assert.equal((await store.judgeUsage())["hf:judge"]!.calls, 1, "the running totals are kept");
  } finally {
    kv.close();
  }
});
