import assert from "node:assert/strict";
import { join } from "node:path";
import * as tf from "../model/tf.ts";
import { loadModel } from "../model/io/checkpoint.ts";
import { fixturePath, useBackend } from "../model/_test_utils.ts";
import { fixturePairs, readDpoExpected } from "./_fixtures.ts";
import { loadTrainingCheckpoint, saveTrainingCheckpoint } from "./checkpoint.ts";
import { type DpoConfig, parseDpoConfig } from "./config.ts";
import { batchIndices, plannedSteps, trainOffline } from "./offline.ts";
import { adaptBeta, DpoTrainer } from "./trainer.ts";

const CONFIG = parseDpoConfig({
  optimizer: "adamw",
  learning_rate: 1e-3,
  weight_decay: 0.01,
  warmup_steps: 1,
  lr_scheduler_type: "linear",
  per_device_train_batch_size: 2,
  max_steps: 5,
  ref_refresh_steps: 3,
  seed: 3,
});

async function fresh(config: DpoConfig) {
  const policy = await loadModel(fixturePath("gpt2_tiny"));
  const reference = await loadModel(fixturePath("dpo/ref"), { trainable: false });
  const trainer = new DpoTrainer({
    policy: policy.model,
    reference: reference.model,
    config,
    eosId: policy.tokenizer.eosTokenId,
  });
  return { trainer, policy, reference };
}

function disposeAll(t: Awaited<ReturnType<typeof fresh>>) {
  t.trainer.policy.dispose();
  t.trainer.reference!.dispose();
  t.trainer.optimizer.dispose();
}

Deno.test("batches are a seeded shuffle per epoch that covers every pair once", () => {
  const c = parseDpoConfig({ per_device_train_batch_size: 2, seed: 1 });
  assert.equal(plannedSteps(5, c), 3);
  const epoch = [0, 1, 2].flatMap((s) => batchIndices(5, s, c));
  assert.deepEqual([...epoch].sort(), [0, 1, 2, 3, 4]);
  assert.deepEqual(batchIndices(5, 1, c), batchIndices(5, 1, c));
  assert.notDeepEqual([3, 4, 5].flatMap((s) => batchIndices(5, s, c)), epoch, "the next epoch reshuffles");
});

Deno.test("training resumed from a checkpoint continues exactly as if it had not stopped", async () => {
  await useBackend("wasm");
  const pairs = fixturePairs(await readDpoExpected());
  const dir = await Deno.makeTempDir({ prefix: "resume_" });
  try {
    const straight = await fresh(CONFIG);
    const straightMetrics: number[] = [];
    await trainOffline({ trainer: straight.trainer, pairs, onStep: (m) => void straightMetrics.push(m.loss) });

    const first = await fresh({ ...CONFIG, max_steps: 2 });
    await trainOffline({
      trainer: first.trainer,
      pairs,
      saveSteps: 2,
      onSave: () => saveTrainingCheckpoint(join(dir, "ckpt"), first.trainer, first),
    });
    disposeAll(first);

    const ckpt = await loadTrainingCheckpoint(join(dir, "ckpt"));
    assert.equal(ckpt.trainerState.step, 2);
    const resumed = new DpoTrainer({
      policy: ckpt.policy.model,
      reference: ckpt.reference!.model,
      config: { ...ckpt.config, max_steps: 5 },
      eosId: ckpt.policy.tokenizer.eosTokenId,
    });
    resumed.restore(ckpt.trainerState);
    resumed.optimizer.load(ckpt.optimizerState);
    const resumedMetrics: number[] = [];
    await trainOffline({ trainer: resumed, pairs, onStep: (m) => void resumedMetrics.push(m.loss) });

    assert.deepEqual(resumedMetrics, straightMetrics.slice(2), "losses of steps 3-5");
    assert.equal(resumed.refVersion, straight.trainer.refVersion);
    for (const [name, v] of straight.trainer.policy.params) {
      assert.deepEqual(await resumed.policy.params.get(name)!.data(), await v.data(), `policy ${name}`);
      assert.deepEqual(
        await resumed.reference!.params.get(name)!.data(),
        await straight.trainer.reference!.params.get(name)!.data(),
        `reference ${name}`,
      );
    }
    const a = await resumed.optimizer.state();
    const b = await straight.trainer.optimizer.state();
    assert.equal(a.step, b.step);
    for (const [name, t] of b.tensors) assert.deepEqual(a.tensors.get(name)!.values, t.values, name);
    disposeAll(straight);
    resumed.policy.dispose();
    resumed.reference!.dispose();
    resumed.optimizer.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a damaged checkpoint is a clear error, and a foreign directory is never overwritten", async () => {
  await useBackend("wasm");
  const dir = await Deno.makeTempDir({ prefix: "ckpt_bad_" });
  try {
    const t = await fresh(CONFIG);
    const ckpt = join(dir, "ckpt");
    await saveTrainingCheckpoint(ckpt, t.trainer, t);
    const bytes = await Deno.readFile(join(ckpt, "optimizer.safetensors"));
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff;
    await Deno.writeFile(join(ckpt, "optimizer.safetensors"), bytes);
    await assert.rejects(
      loadTrainingCheckpoint(ckpt),
      /Cannot load checkpoint '.*ckpt': 'optimizer\.safetensors' does not match its sha256 in checkpoint\.json/,
    );
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff;
    await Deno.writeFile(join(ckpt, "optimizer.safetensors"), bytes);
    await Deno.remove(join(ckpt, "reference/model.safetensors"));
    await assert.rejects(
      loadTrainingCheckpoint(ckpt),
      /'reference\/model\.safetensors' is listed in checkpoint\.json but missing/,
    );
    await Deno.writeTextFile(join(dir, "precious.txt"), "keep me");
    await assert.rejects(saveTrainingCheckpoint(dir, t.trainer, t), /it exists and is not a checkpoint/);
    assert.equal(await Deno.readTextFile(join(dir, "precious.txt")), "keep me");
    disposeAll(t);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a model with a non-finite weight is never saved", async () => {
  await useBackend("wasm");
  const dir = await Deno.makeTempDir({ prefix: "ckpt_nan_" });
  try {
    const t = await fresh(CONFIG);
    const w = t.trainer.policy.params.get("transformer.ln_f.bias")!;
    w.assign(tf.fill(w.shape, Infinity));
    await assert.rejects(
      saveTrainingCheckpoint(join(dir, "ckpt"), t.trainer, t),
      /policy weight 'transformer\.ln_f\.bias' holds Infinity at index 0/,
    );
    assert.deepEqual([...Deno.readDirSync(dir)], [], "nothing written");
    disposeAll(t);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("adaptBeta: β rises above the KL target, falls below it, at most 2% a step", () => {
  assert.equal(adaptBeta(0.1, 0.5, 0.5), 0.1);
  assert.ok(Math.abs(adaptBeta(0.1, 5, 0.5) - 0.1 * 1.02) < 1e-15);
  assert.ok(Math.abs(adaptBeta(0.1, 0, 0.5) - 0.1 * 0.98) < 1e-15);
  assert.ok(Math.abs(adaptBeta(0.1, 0.55, 0.5) - 0.1 * 1.01) < 1e-12);
  assert.equal(adaptBeta(0.1, NaN, 0.5), 0.1);
  assert.equal(adaptBeta(0.1, 3, 0), 0.1, "no target: fixed");
});
