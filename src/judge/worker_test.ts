import assert from "node:assert/strict";
import { PairStore } from "../store/pairs.ts";
import { memoryStore, sampledInput } from "../store/_test_helpers.ts";
import { type Judge, JudgeError } from "./types.ts";
import { runJudgeWorker } from "./worker.ts";

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
    await runJudgeWorker({
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
    await runJudgeWorker({
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
