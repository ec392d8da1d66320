import assert from "node:assert/strict";
import { memoryStore, sampledInput } from "../store/_test_helpers.ts";
import type { Judge } from "./types.ts";
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
