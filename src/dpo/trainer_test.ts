import assert from "node:assert/strict";
import * as tf from "../model/tf.ts";
import { loadModel } from "../model/io/checkpoint.ts";
import { assertClose, fixturePath, useBackend } from "../model/_test_utils.ts";
import { fixturePairs, readDpoExpected } from "./_fixtures.ts";
import { type DpoConfig, parseDpoConfig } from "./config.ts";
import { DpoTrainer, emaDecayAt } from "./trainer.ts";
import { scorePairs } from "../model/logprobs.ts";

async function makeTrainer(config: Partial<DpoConfig>, refDir = fixturePath("dpo/ref"), emaDecay?: number) {
  const policy = await loadModel(fixturePath("gpt2_tiny"));
  const reference = await loadModel(refDir, { trainable: false });
  const trainer = new DpoTrainer({
    policy: policy.model,
    reference: reference.model,
    config: parseDpoConfig(config),
    eosId: policy.tokenizer.eosTokenId,
    emaDecay,
  });
  const dispose = () => {
    policy.model.dispose();
    reference.model.dispose();
    trainer.optimizer.dispose();
    trainer.disposeEma();
  };
  return { trainer, dispose };
}

const SGD = {
  optimizer: "sgd",
  lr_scheduler_type: "constant",
  per_device_train_batch_size: 5,
  beta: 0.1,
} as const;

Deno.test("one SGD step matches PyTorch: loss, every metric, grad norm, clipped and unclipped weights", async () => {
  await useBackend("wasm");
  const expected = await readDpoExpected();
  const sigmoid = expected.losses.find((c) => c.name === "sigmoid")!;
  for (const step of [expected.sgd_step, expected.sgd_step_unclipped]) {
    const { trainer, dispose } = await makeTrainer({ ...SGD, learning_rate: step.lr, max_grad_norm: step.max_norm });
    const m = await trainer.trainStep(fixturePairs(expected), 1);
    const rel = (a: number, b: number, what: string) =>
      assert.ok(Math.abs(a - b) <= 1e-5 * Math.max(1, Math.abs(b)), `${what}: ${a} != ${b}`);
    rel(m.loss, sigmoid.loss, "loss");
    rel(m.grad_norm, step.grad_norm, "grad_norm");
    for (const [name, value] of Object.entries(sigmoid.metrics)) {
      rel(m[name as keyof typeof m] as number, value, name);
    }
    const kl = expected.pairs.reduce(
      (a, p) => a + p.policy_chosen_logp - p.ref_chosen_logp + p.policy_rejected_logp - p.ref_rejected_logp,
      0,
    ) / (2 * expected.pairs.length);
    rel(m["objective/kl"], kl, "objective/kl");
    assert.equal(m.learning_rate, step.lr);
    assert.equal(m.skipped, false);
    for (const [name, p] of Object.entries(step.params)) {
      const v = trainer.policy.params.get(name)!;
      assert.deepEqual(v.shape, p.shape);
      assertClose(await v.data(), p.values, 1e-4, `${name} after the step`);
    }
    dispose();
  }
});

Deno.test("the loss is ln 2 when the reference is the policy", async () => {
  await useBackend("wasm");
  const expected = await readDpoExpected();
  const { trainer, dispose } = await makeTrainer(SGD, fixturePath("gpt2_tiny"));
  const m = await trainer.trainStep(fixturePairs(expected), 1);
  assertClose([m.loss], [expected.equal.loss], 1e-6, "loss");
  assertClose([m["rewards/margins"]], [0], 1e-6, "margins");
  dispose();
});

Deno.test("gradient accumulation over micro-batches equals one big batch", async () => {
  await useBackend("wasm");
  const pairs = fixturePairs(await readDpoExpected()).slice(0, 4);
  // SGD: the update is linear in the gradient. (AdamW divides by sqrt(v), which turns float noise in
  // gradients that are exactly zero in theory, such as the key bias's, into lr-sized steps.)
  const config = { optimizer: "sgd", learning_rate: 0.5, lr_scheduler_type: "constant" } as const;
  const whole = await makeTrainer({ ...config, per_device_train_batch_size: 4, gradient_accumulation_steps: 1 });
  const parts = await makeTrainer({ ...config, per_device_train_batch_size: 2, gradient_accumulation_steps: 2 });
  const a = await whole.trainer.trainStep(pairs, 2);
  const b = await parts.trainer.trainStep(pairs, 2);
  assertClose([b.loss, b.grad_norm], [a.loss, a.grad_norm], 1e-6, "loss and grad norm");
  for (const [name, v] of whole.trainer.policy.params) {
    assertClose(await parts.trainer.policy.params.get(name)!.data(), await v.data(), 1e-6, name);
  }
  whole.dispose();
  parts.dispose();
});

Deno.test("a NaN batch changes nothing and is counted", async () => {
  await useBackend("wasm");
  const pairs = fixturePairs(await readDpoExpected());
  const { trainer, dispose } = await makeTrainer({ ...SGD, learning_rate: 0.5 });
  const ln = trainer.reference!.params.get("transformer.ln_f.weight")!;
  ln.assign(tf.fill(ln.shape, NaN));
  const before = await Promise.all([...trainer.policy.params.values()].map((v) => v.data()));
  const m = await trainer.trainStep(pairs, 2);
  assert.equal(m.skipped, true);
  assert.equal(m.skipped_steps, 1);
  assert.equal(trainer.step, 1);
  const after = await Promise.all([...trainer.policy.params.values()].map((v) => v.data()));
  after.forEach((a, i) => assert.deepEqual(a, before[i]));
  dispose();
});

Deno.test("after AdamW steps the policy computes with the weights it holds, with and without OpenBLAS", async () => {
  const pairs = fixturePairs(await readDpoExpected());
  const rows = pairs.map((p) => ({ promptIds: p.promptIds, completionIds: p.chosenIds }));
  try {
    for (const nativeMatmul of [false, true]) {
      await useBackend("wasm", nativeMatmul);
      const { trainer, dispose } = await makeTrainer({ ...SGD, optimizer: "adamw", learning_rate: 0.01 });
      assert.ok(trainer.optimizer.fused, "the fused AdamW is the path under test");
      for (let step = 0; step < 2; step++) await trainer.trainStep(pairs, 4);
      const model = trainer.policy;
      const score = async () => await scorePairs(model, rows, { eosId: 0, maxLength: model.contextLength });
      const held = await score();
      // The same values in storage no kernel has seen: what the weights compute when nothing is remembered.
      for (const v of model.params.values()) v.assign(tf.clone(v));
      const fresh = await score();
      const what = `log-probs after two steps (${nativeMatmul ? "OpenBLAS" : "wasm"} matmul)`;
      assertClose(held.map((r) => r.logp), fresh.map((r) => r.logp), 1e-4, what);
      dispose();
    }
  } finally {
    await useBackend("wasm");
  }
});

Deno.test("reference log-probs are computed once per pair and version, and no tensor leaks per step", async () => {
  await useBackend("wasm");
  const pairs = fixturePairs(await readDpoExpected());
  const { trainer, dispose } = await makeTrainer({ ...SGD, learning_rate: 0.01, ref_refresh_steps: 2 });
  await trainer.trainStep(pairs, 4);
  assert.equal(trainer.referenceRowsScored, 2 * pairs.length);
  const tensors = tf.memory().numTensors;
  await trainer.trainStep(pairs, 4); // cached; then the reference is refreshed (step 2)
  assert.equal(trainer.referenceRowsScored, 2 * pairs.length);
  assert.equal(trainer.refVersion, 1);
  assert.equal(tf.memory().numTensors, tensors, "tensors after a step");
  await trainer.trainStep(pairs, 4); // stale cache: scored again under the new reference
  assert.equal(trainer.referenceRowsScored, 4 * pairs.length);
  dispose();
});

Deno.test("a KTO step matches PyTorch's KTO loss with TRL's mismatched pairs", async () => {
  await useBackend("wasm");
  const kto = JSON.parse(await Deno.readTextFile(fixturePath("dpo/expected.json"))).kto as {
    beta: number;
    desirable_weight: number;
    undesirable_weight: number;
    examples: { prompt_ids: number[]; completion_ids: number[]; label: boolean; logratio: number }[];
    trl_rotation: { kl: number; loss: number };
  };
  const { trainer, dispose } = await makeTrainer({
    ...SGD,
    learning_rate: 0.1,
    beta: kto.beta,
    desirable_weight: kto.desirable_weight,
    undesirable_weight: kto.undesirable_weight,
  });
  const m = await trainer.ktoStep(
    kto.examples.map((e) => ({ promptIds: e.prompt_ids, completionIds: e.completion_ids, desirable: e.label })),
    1,
  );
  assertClose([m.loss, m.kl], [kto.trl_rotation.loss, kto.trl_rotation.kl], 1e-5, "KTO loss and reference point");
  const good = kto.examples.filter((e) => e.label).map((e) => kto.beta * e.logratio);
  assertClose([m["rewards/chosen"]], [good.reduce((a, b) => a + b) / good.length], 1e-5, "rewards/chosen");
  assert.equal(m.skipped, false);
  assert.ok(m.grad_norm > 0);
  await assert.rejects(trainer.ktoStep([{ promptIds: [1], completionIds: [2], desirable: true }], 1), /at least 2/);
  dispose();
});

Deno.test("LoRA DPO matches PyTorch: the reference is the base with the adapter off, only the adapter moves", async () => {
  await useBackend("wasm");
  for (const [base, adapter] of [["llama_tiny", "lora/llama_tiny"], ["gpt2_tiny", "lora/gpt2_tiny"]] as const) {
    const expected = JSON.parse(await Deno.readTextFile(fixturePath(`${adapter}/expected.json`))).dpo as {
      beta: number;
      loss: number;
      pairs: {
        prompt_ids: number[];
        chosen_ids: number[];
        rejected_ids: number[];
        ref_chosen_logp: number;
        ref_rejected_logp: number;
      }[];
      grads: Record<string, { shape: number[]; values: number[] }>;
    };
    const policy = await loadModel(fixturePath(adapter), { base: fixturePath(base) });
    const lr = 0.5;
    const config = parseDpoConfig({ ...SGD, beta: expected.beta, learning_rate: lr, max_grad_norm: 1e9 });
    assert.throws(
      () => new DpoTrainer({ policy: policy.model, reference: policy.model, config, eosId: 316 }),
      /its base with the adapter disabled is the reference/,
    );
    const trainer = new DpoTrainer({
      policy: policy.model,
      reference: null,
      config,
      eosId: policy.tokenizer.eosTokenId,
    });
    const pairs = expected.pairs.map((p) => ({
      promptIds: p.prompt_ids,
      chosenIds: p.chosen_ids,
      rejectedIds: p.rejected_ids,
    }));
    const refs = await trainer.referenceLogps(pairs);
    assertClose(refs.chosen, expected.pairs.map((p) => p.ref_chosen_logp), 1e-4, `${base}: reference chosen`);
    assertClose(refs.rejected, expected.pairs.map((p) => p.ref_rejected_logp), 1e-4, `${base}: reference rejected`);
    const frozen = await Promise.all([...policy.model.params.values()].map((v) => v.data()));
    const before = new Map<string, Float32Array>();
    for (const name of Object.keys(expected.grads)) {
      before.set(name, (await policy.model.adapter!.params.get(name)!.data()) as Float32Array);
    }
    const m = await trainer.trainStep(pairs, 1);
    assertClose([m.loss], [expected.loss], 1e-5, `${base}: loss`);
    for (const [name, g] of Object.entries(expected.grads)) {
      const after = await policy.model.adapter!.params.get(name)!.data();
      const grad = Array.from(after, (a, i) => (before.get(name)![i]! - a) / lr);
      assertClose(grad, g.values, 2e-4, `${base}: gradient of ${name} (from one SGD step)`);
    }
    const now = await Promise.all([...policy.model.params.values()].map((v) => v.data()));
    now.forEach((a, i) => assert.deepEqual(a, frozen[i], "the base never moves"));
    assert.throws(() => trainer.refreshReference(1), /the reference is its frozen base/);
    policy.model.dispose();
    trainer.optimizer.dispose();
  }
});

Deno.test("emaDecayAt: the decay, capped by (1 + step) / (10 + step) early on", () => {
  assert.equal(emaDecayAt(0.95, 0), 0.1);
  assert.equal(emaDecayAt(0.95, 10), 11 / 20);
  assert.equal(emaDecayAt(0.95, 1000), 0.95);
});

Deno.test("EMA: the average follows each update, serves inside withEmaWeights, and training weights come back", async () => {
  await useBackend("wasm");
  const pairs = fixturePairs(await readDpoExpected());
  const { trainer, dispose } = await makeTrainer({ ...SGD, learning_rate: 0.5 }, fixturePath("dpo/ref"), 0.9);
  assert.equal(trainer.hasEma, true);
  const name = "transformer.h.0.attn.c_attn.weight";
  const w = trainer.policy.params.get(name)!;
  const w0 = await w.data();
  await trainer.trainStep(pairs, 2); // step 0: d = min(0.9, 1/10) = 0.1
  const w1 = await w.data();
  assert.ok(w1.some((v, i) => v !== w0[i]), "the step moved the weight");
  const avg1 = Array.from(w0, (v, i) => 0.1 * v + 0.9 * w1[i]!);
  assertClose(await trainer.emaWeights().get(name)!.data(), avg1, 1e-6, "average after step 0");
  await trainer.trainStep(pairs, 2); // step 1: d = 2/11
  const w2 = await w.data();
  const avg2 = avg1.map((v, i) => (2 / 11) * v + (9 / 11) * w2[i]!);
  const tensors = tf.memory().numTensors;
  const inside = await trainer.withEmaWeights(async () => await trainer.policy.params.get(name)!.data());
  assertClose(inside, avg2, 1e-6, "the policy's weight inside withEmaWeights");
  assert.deepEqual(await w.data(), w2, "the trained weight is back");
  assert.equal(tf.memory().numTensors, tensors, "tensors after withEmaWeights");
  // An error inside still puts the trained weights back.
  await assert.rejects(trainer.withEmaWeights(() => Promise.reject(new Error("boom"))), /boom/);
  assert.deepEqual(await w.data(), w2);
  // A skipped (NaN) step does not move the average.
  const ln = trainer.reference!.params.get("transformer.ln_f.weight")!;
  const lnBefore = ln.clone();
  ln.assign(tf.fill(ln.shape, NaN));
  await trainer.trainStep(pairs.map((p) => ({ ...p, chosenIds: [...p.chosenIds, 1] })), 2);
  assertClose(await trainer.emaWeights().get(name)!.data(), avg2, 1e-6, "average after a skipped step");
  ln.assign(lnBefore);
  lnBefore.dispose();
  dispose();
});

Deno.test("EMA off: withEmaWeights runs on the policy as it is, and a decay outside [0, 1) is refused", async () => {
  await useBackend("wasm");
  const { trainer, dispose } = await makeTrainer(SGD);
  assert.equal(trainer.hasEma, false);
  assert.equal(await trainer.withEmaWeights(() => 7), 7);
  dispose();
  await assert.rejects(makeTrainer(SGD, fixturePath("dpo/ref"), 1), /decay must be in \[0, 1\)/);
});

Deno.test("inverse_sqrt: online steps (no planned end) warm up, then decay as √(warmup / step)", async () => {
  await useBackend("wasm");
  const pairs = fixturePairs(await readDpoExpected()).slice(0, 2);
  const { trainer, dispose } = await makeTrainer({
    ...SGD,
    learning_rate: 0.01,
    lr_scheduler_type: "inverse_sqrt",
    warmup_steps: 2,
  });
  const lrs: number[] = [];
  for (let i = 0; i < 5; i++) lrs.push((await trainer.trainStep(pairs, Number.MAX_SAFE_INTEGER)).learning_rate);
  assertClose(lrs, [0, 0.005, 0.01, 0.01 * Math.sqrt(2 / 3), 0.01 * Math.sqrt(2 / 4)], 1e-12, "learning rates");
  dispose();
});
