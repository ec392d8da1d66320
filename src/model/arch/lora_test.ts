/** LoRA adapters checked against PyTorch fixtures (scripts/make_llama_fixtures.py): PEFT layout, forward, gradients, merge. */
import * as tf from "../tf.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { type LoadedModel, loadModel, saveModel } from "../io/checkpoint.ts";
import { assertClose, assertNoLeak, fixturePath, useBackend } from "../_test_utils.ts";
import { buildScoringBatch, scorePairs, tokenLogProbs } from "../logprobs.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, attachNewAdapter, LoraConfigSchema } from "./lora.ts";
import { encodeSafetensors, readSafetensors } from "../io/safetensors.ts";

interface LoraExpected {
  eos_token_id: number;
  cases: { prompt_ids: number[]; completion_ids: number[]; logp_sum: number; base_logp_sum: number }[];
  grads: Record<string, { shape: number[]; values: number[] }>;
  merged: Record<string, { shape: number[]; values: number[] }>;
}

/** [base fixture, adapter fixture]. */
const ADAPTERS = [["llama_tiny", "lora/llama_tiny"], ["gpt2_tiny", "lora/gpt2_tiny"]] as const;

async function readLoraExpected(name: string): Promise<LoraExpected> {
  return JSON.parse(await Deno.readTextFile(fixturePath(`${name}/expected.json`)));
}

async function withAdapter(
  [base, adapter]: readonly [string, string],
  fn: (m: LoadedModel) => Promise<void>,
  options: { mergeAdapter?: boolean } = {},
): Promise<void> {
  const loaded = await loadModel(fixturePath(adapter), { base: fixturePath(base), ...options });
  try {
    await fn(loaded);
  } finally {
    loaded.model.dispose();
  }
}

async function logps(model: LoadedModel["model"], expected: LoraExpected): Promise<number[]> {
  const pairs = expected.cases.map((c) => ({ promptIds: c.prompt_ids, completionIds: c.completion_ids }));
  return (await scorePairs(model, pairs, { eosId: expected.eos_token_id, maxLength: model.contextLength })).map((s) =>
    s.logp
  );
}

for (const fixture of ADAPTERS) {
  const [, name] = fixture;
  Deno.test(`${name}: the PEFT adapter's log-probs match PyTorch, and disabled it is the base`, async () => {
    await useBackend("wasm");
    const expected = await readLoraExpected(name);
    await withAdapter(fixture, async ({ model }) => {
      await assertNoLeak(async () => {
        assert.ok(model.adapter);
        assertClose(await logps(model, expected), expected.cases.map((c) => c.logp_sum), 1e-4, "with the adapter");
        model.adapter!.enabled = false;
        assertClose(await logps(model, expected), expected.cases.map((c) => c.base_logp_sum), 1e-4, "adapter off");
        model.adapter!.enabled = true;
      }, "scoring");
    });
  });

  Deno.test(`${name}: only the adapter takes gradients, and they match PyTorch`, async () => {
    await useBackend("wasm");
    const expected = await readLoraExpected(name);
    await withAdapter(fixture, async ({ model }) => {
      await assertNoLeak(async () => {
        const vars = model.trainableVariables();
        assert.deepEqual(vars, [...model.adapter!.params.values()]);
        assert.ok([...model.params.values()].every((v) => !v.trainable), "the base is frozen");
        const pairs = expected.cases.map((c) => ({ promptIds: c.prompt_ids, completionIds: c.completion_ids }));
        const batch = buildScoringBatch(pairs, { eosId: expected.eos_token_id, maxLength: model.contextLength });
        const { value, grads } = tf.variableGrads(() => tf.sum(tokenLogProbs(model, batch)) as tf.Scalar, vars);
        for (const [pname, g] of Object.entries(expected.grads)) {
          const ours = grads[model.adapter!.params.get(pname)!.name]!;
          assert.deepEqual(ours.shape, g.shape);
          assertClose(await ours.data(), g.values, 1e-4, `grad ${pname}`);
        }
        tf.dispose([value, ...Object.values(grads)]);
      }, "gradient");
    });
  });

  Deno.test(`${name}: merging folds the adapter into the base weights as PyTorch does`, async () => {
    await useBackend("wasm");
    const expected = await readLoraExpected(name);
    await withAdapter(fixture, async ({ model }) => {
      assert.equal(model.adapter, undefined);
      for (const [pname, w] of Object.entries(expected.merged)) {
        assertClose(await model.params.get(pname)!.data(), w.values, 1e-5, `merged ${pname}`);
      }
      assertClose(await logps(model, expected), expected.cases.map((c) => c.logp_sum), 1e-4, "merged model");
    }, { mergeAdapter: true });
  });
}

Deno.test("an adapter saves in PEFT's layout and loads back identical; its base is named in the config", async () => {
  await useBackend("wasm");
  const dir = await Deno.makeTempDir();
  try {
    await withAdapter(ADAPTERS[0], async (loaded) => {
      await saveModel(loaded, join(dir, "out"));
      const files = [...Deno.readDirSync(join(dir, "out"))].map((e) => e.name).sort();
      assert.deepEqual(files, [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE], "only the adapter is written");
      const config = JSON.parse(await Deno.readTextFile(join(dir, "out", ADAPTER_CONFIG_FILE)));
      assert.equal(config.peft_type, "LORA");
      assert.equal(config.base_model_name_or_path, fixturePath("llama_tiny"));
      assert.deepEqual(config.target_modules, ["q_proj", "v_proj", "up_proj", "down_proj"]);
      const saved = await readSafetensors(join(dir, "out", ADAPTER_WEIGHTS_FILE));
      const original = await readSafetensors(fixturePath(`lora/llama_tiny/${ADAPTER_WEIGHTS_FILE}`));
      assert.deepEqual([...saved.tensors.keys()].sort(), [...original.tensors.keys()].sort());
      for (const [n, t] of original.tensors) assert.deepEqual(saved.tensors.get(n)!.values, t.values, n);
      const again = await loadModel(join(dir, "out")); // the base comes from base_model_name_or_path
      again.model.dispose();
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a fresh adapter is PEFT's initialization: the model is unchanged, only A is random", async () => {
  await useBackend("wasm");
  const loaded = await loadModel(fixturePath("qwen2_tiny"));
  try {
    const pairs = [{ promptIds: [5, 6, 7], completionIds: [8, 9] }];
    const opts = { eosId: 316, maxLength: 64 };
    const before = await scorePairs(loaded.model, pairs, opts);
    const adapter = attachNewAdapter(loaded.model, LoraConfigSchema.parse({ r: 4, target_modules: "all-linear" }), 1);
    assert.equal(adapter.modules().length, 2 * 7, "all-linear: every projection of both layers");
    const after = await scorePairs(loaded.model, pairs, opts);
    assertClose(after.map((s) => s.logp), before.map((s) => s.logp), 1e-6, "B = 0 changes nothing");
    const a = await adapter.params.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")!.data();
    assert.ok(a.some((x) => x !== 0) && a.every((x) => Math.abs(x) <= 1 / Math.sqrt(32)), "A ~ U(±1/sqrt(in))");
    assert.throws(() => attachNewAdapter(loaded.model, LoraConfigSchema.parse({}), 1), /already has one/);
  } finally {
    loaded.model.dispose();
  }
  const gpt2 = await loadModel(fixturePath("gpt2_tiny"));
  try {
    assert.throws(
      () => attachNewAdapter(gpt2.model, LoraConfigSchema.parse({ target_modules: ["q_proj"] }), 1),
      /target_modules \["q_proj"\] matches no linear layer of this gpt2 model \(its linear layers are named c_attn, c_proj, c_fc\)/,
    );
    assert.throws(
      () => attachNewAdapter(gpt2.model, LoraConfigSchema.parse({ target_modules: "(c_attn" }), 1),
      /target_modules '\(c_attn' is not a regex/,
    );
    const regex = attachNewAdapter(gpt2.model, LoraConfigSchema.parse({ target_modules: ".*\\.1\\.mlp\\..*" }), 1);
    assert.deepEqual(regex.modules(), ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"], "a regex in full");
    gpt2.model.adapter!.dispose();
    gpt2.model.adapter = undefined;
    assert.equal(attachNewAdapter(gpt2.model, LoraConfigSchema.parse({}), 1).modules().length, 2, "default: c_attn");
  } finally {
    gpt2.model.dispose();
  }
});

Deno.test("a malformed adapter is a clear error and leaves no tensor behind", async () => {
  await useBackend("wasm");
  const dir = await Deno.makeTempDir();
  const before = tf.memory().numTensors;
  try {
    const src = fixturePath("lora/llama_tiny");
    const copy = async (weights: Map<string, { shape: number[]; values: Float32Array }>, config?: object) => {
      const base = JSON.parse(await Deno.readTextFile(join(src, ADAPTER_CONFIG_FILE)));
      await Deno.writeTextFile(join(dir, ADAPTER_CONFIG_FILE), JSON.stringify({ ...base, ...config }));
      await Deno.writeFile(join(dir, ADAPTER_WEIGHTS_FILE), encodeSafetensors(weights));
    };
    const { tensors } = await readSafetensors(join(src, ADAPTER_WEIGHTS_FILE));
    const all = new Map([...tensors].map(([n, t]) => [n, { shape: t.shape, values: t.values as Float32Array }]));
    const load = () => loadModel(dir, { base: fixturePath("llama_tiny") });
    const missing = new Map(all);
    missing.delete("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight");
    await copy(missing);
    await assert.rejects(
      load,
      /1 tensor\(s\) missing: base_model\.model\.model\.layers\.1\.mlp\.up_proj\.lora_B\.weight/,
    );
    await copy(all, { r: 8 });
    await assert.rejects(load, /has shape \[4,32\] but r and the layer imply \[8,32\]/);
    await copy(all, { target_modules: ["q_proj"] });
    await assert.rejects(load, /unexpected tensor\(s\) for target_modules \["q_proj"\]/);
    await copy(all, { r: -1, use_dora: true });
    await assert.rejects(load, /adapter_config\.json': 'r': .*; 'use_dora'/);
    await copy(all, { base_model_name_or_path: null });
    await assert.rejects(() => loadModel(dir), /names no base_model_name_or_path/);
    assert.equal(tf.memory().numTensors, before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("lora_dropout in training: masks change the output, and A and B still get gradients", async () => {
  await useBackend("wasm");
  for (const name of ["gpt2_tiny", "llama_tiny"]) {
    const loaded = await loadModel(fixturePath(name));
    try {
      const config = LoraConfigSchema.parse({ r: 4, lora_dropout: 0.5, target_modules: "all-linear" });
      const adapter = attachNewAdapter(loaded.model, config, 3);
      // B starts at zero: move it so that the adapter (and its dropout) changes the output.
      for (const [n, v] of adapter.params) if (n.endsWith("lora_B.weight")) v.assign(tf.randomNormal(v.shape, 0, 0.1));
      const batch = buildScoringBatch([{ promptIds: [5, 6, 7], completionIds: [8, 9] }], { eosId: 0, maxLength: 32 });
      const score = () => tf.tidy(() => tf.sum(tokenLogProbs(loaded.model, batch)).dataSync()[0]!);
      const evaluated = score();
      adapter.training = true;
      assert.notEqual(score(), evaluated, `${name}: dropout changes the training forward`);
      const { value, grads } = tf.variableGrads(
        () => tf.sum(tokenLogProbs(loaded.model, batch)) as tf.Scalar,
        loaded.model.trainableVariables(),
      );
      assert.equal(Object.keys(grads).length, adapter.params.size);
      for (const g of Object.values(grads)) assert.ok((await g.data()).some((x) => x !== 0), `${name}: a gradient`);
      tf.dispose([value, ...Object.values(grads)]);
      adapter.training = false;
      assert.equal(score(), evaluated, `${name}: without training, no dropout`);
    } finally {
      loaded.model.dispose();
    }
  }
});
