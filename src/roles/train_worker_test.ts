import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { TrainerEvent, TrainerRoleOptions } from "./train.ts";
import { startTrainerWorker } from "./train_worker.ts";
// Type-checks the worker module itself: it is loaded only at run time, by URL.
import type {} from "../../workers/trainer.ts";

const MODEL = fileURLToPath(new URL("../../tests/fixtures/gpt2_tiny", import.meta.url));

function options(dir: string): TrainerRoleOptions {
  return {
    kv: join(dir, "dpo.kv"),
    checkpoints: `dir:${join(dir, "checkpoints")}`,
    model: MODEL,
    stateDir: join(dir, "trainer"),
    mode: "rounds",
    roundSize: 4,
    roundEpochs: 1,
    publishEvery: 1,
    refRefreshRounds: 1,
    maxStaleness: 4,
    keep: 2,
    owner: "worker-test",
    leaseMs: 60_000,
    pollMs: 20,
    backend: "wasm",
    dpo: { per_device_train_batch_size: 2 },
    eval: { task: "arithmetic", prompts: 2, maxNewTokens: 2 },
  };
}

Deno.test("trainer worker: events arrive in the parent, and stop waits for the role to end", async () => {
  const dir = await Deno.makeTempDir({ prefix: "trainer_worker_" });
  try {
    const events: TrainerEvent[] = [];
    let ready!: () => void;
    const isReady = new Promise<void>((resolve) => ready = resolve);
    const worker = startTrainerWorker(options(dir), (e) => {
      events.push(e);
      if (e.type === "ready") ready();
    });
    await Promise.race([isReady, worker.done]);
    await worker.stop();
    await worker.done;
    assert.ok(events.some((e) => e.type === "log" && /^backend: wasm/.test(e.message)));
    const r = events.find((e) => e.type === "ready");
    assert.ok(r?.type === "ready" && r.policy_version === 0 && typeof r.base_accuracy === "number");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("trainer worker: a failure in the role rejects `done` with its message", async () => {
  const dir = await Deno.makeTempDir({ prefix: "trainer_worker_" });
  try {
    const worker = startTrainerWorker(
      { ...options(dir), model: join(dir, "no-such-model"), eval: undefined },
      () => {},
    );
    await assert.rejects(worker.done, /no-such-model/);
    await worker.stop(); // after the end: a no-op
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
