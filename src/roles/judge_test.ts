import assert from "node:assert/strict";
import { PairStore } from "../store/pairs.ts";
import { legacyEqualCandidates, memoryStore, sampledInput } from "../store/_test_helpers.ts";
import { type Judge, JudgeError } from "../judge/types.ts";
import { runJudgeRole } from "./judge.ts";

Deno.test("judge worker: records the verdict with the judge's agreement, counted per minute", async () => {
  const { kv, store, clock } = await memoryStore();
  try {
    const { pair } = await store.create(sampledInput());
    const judge: Judge = {
      id: "hf:x",
      kind: "hf",
      judge: () => Promise.resolve({ choice: "tie", latencyMs: 3, judgeId: "hf:x", agreed: false }),
    };
    const stop = new AbortController();
    await runJudgeRole({
      store,
      judge,
      owner: "j1",
      concurrency: 2,
      leaseMs: 10_000,
      pollMs: 10,
      signal: stop.signal,
      onVerdict: () => stop.abort(),
    });
    const judged = await store.get(pair.id);
    assert.equal(judged!.status, "tie");
    assert.deepEqual(judged!.verdict, {
      choice: "tie",
      judge: { kind: "hf", id: "hf:x" },
      reason: undefined,
      latencyMs: 3,
      agreed: false,
      at: clock.t,
    });
    const activity = await store.activity({ from: clock.t, to: clock.t });
    assert.deepEqual([activity.counts.tie, activity.counts.disagreed, activity.counts.agreed], [[1], [1], [0]]);
  } finally {
    kv.close();
  }
});

Deno.test("judge worker: a judge that always fails ends the pair judge_failed after N tries, backing off; a person can still label it", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const store = new PairStore(kv);
    const { pair } = await store.create(sampledInput());
    let calls = 0;
    const judge: Judge = {
      id: "hf:x",
      kind: "hf",
      judge: () => {
        calls++;
        return Promise.reject(new JudgeError("Cannot judge: HTTP 401", { judgeId: "hf:x", code: "http", status: 401 }));
      },
    };
    const stop = new AbortController();
    const errors: boolean[] = [];
    const started = Date.now();
    await runJudgeRole({
      store,
      judge,
      owner: "j1",
      concurrency: 2,
      leaseMs: 400,
      maxAttempts: 3,
      backoffMs: 100,
      pollMs: 10,
      signal: stop.signal,
      onError: (_id, _err, final) => {
        errors.push(final);
        if (final) setTimeout(() => stop.abort(), 300); // time for a fourth try, which must not come
      },
    });
    assert.equal(calls, 3, "bounded: three attempts, then never again");
    assert.deepEqual(errors, [false, false, true]);
    assert.ok(Date.now() - started >= 100 + 200, "backed off 100 ms, then 200 ms");
    const failed = await store.get(pair.id);
    assert.equal(failed?.status, "judge_failed");
    assert.equal(failed?.judgeFailures, 3);
    assert.equal(failed?.statusReason, "Cannot judge: HTTP 401");
    assert.equal((await store.counts()).judge_failed, 1);
    const labeled = await store.recordVerdict(pair.id, { choice: "a", judge: { kind: "human", id: "ann" } });
    assert.equal(labeled.status, "labeled");
    assert.equal(labeled.statusReason, undefined);
  } finally {
    kv.close();
  }
});

Deno.test("judge worker: an old pair showing the same text as a and b never reaches the judge; verdicts carry usage and votes", async () => {
  const { kv, store } = await memoryStore();
  try {
    const same = await legacyEqualCandidates(kv, store, [" 56", "56"]);
    const mixed = await legacyEqualCandidates(kv, store, [" 56", " 56", " 57"]);
    const seen: [string, string][] = [];
    const usage = { requests: 2, promptTokens: 40, completionTokens: 6 };
    const judge: Judge = {
      id: "panel",
      kind: "ensemble",
      judge: (input) => {
        seen.push([input.a, input.b]);
        return Promise.resolve({
          choice: "b",
          latencyMs: 7,
          judgeId: "panel",
          usage,
          votes: [{ judgeId: "hf:x", choice: "b", latencyMs: 6, usage }, {
            judgeId: "arithmetic",
            choice: "failed",
            latencyMs: 1,
            error: "x".repeat(5000),
          }],
        });
      },
    };
    const stop = new AbortController();
    await runJudgeRole({
      store,
      judge,
      owner: "j1",
      concurrency: 4,
      leaseMs: 10_000,
      pollMs: 10,
      signal: stop.signal,
      onVerdict: () => stop.abort(),
    });
    assert.deepEqual(seen, [[" 56", " 57"]], "only two different texts were judged");
    assert.equal((await store.get(same.id))!.status, "identical");
    const judged = (await store.get(mixed.id))!;
    assert.deepEqual([judged.status, judged.candidates, judged.chosen], ["labeled", [0, 2], 2]);
    assert.deepEqual(judged.verdict!.usage, usage);
    assert.deepEqual(judged.verdict!.votes!.map((v) => [v.judgeId, v.choice, v.error?.length]), [
      ["hf:x", "b", undefined],
      ["arithmetic", "failed", 2000],
    ]);
    const totals = await store.judgeUsage();
    assert.deepEqual([totals.panel!.calls, totals.panel!.prompt_tokens, totals["hf:x"]!.votes_agreed], [1, 40, 1]);
    assert.equal(totals.arithmetic!.failures, 1);
  } finally {
    kv.close();
  }
});
