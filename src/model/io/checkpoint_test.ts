import * as tf from "../tf.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel, saveModel } from "./checkpoint.ts";
import { parseModelConfig } from "../arch/registry.ts";
import { decodeSafetensors, encodeSafetensors, readSafetensors } from "./safetensors.ts";
import { assertClose, fixturePath, readExpected, useBackend } from "../_test_utils.ts";
import { scorePairs } from "../logprobs.ts";

const FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];

/** A private copy of the gpt2_tiny fixture to break in one way. */
async function copyFixture(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "ckpt_test_" });
  for (const f of FILES) await Deno.copyFile(join(fixturePath("gpt2_tiny"), f), join(dir, f));
  return dir;
}

async function editWeights(
  dir: string,
  edit: (t: Map<string, { shape: number[]; values: Float32Array }>) => void,
): Promise<void> {
  const { tensors } = await readSafetensors(join(dir, "model.safetensors"));
  const m = new Map([...tensors].map(([k, v]) => [k, { shape: v.shape, values: v.values as Float32Array }]));
  edit(m);
  await Deno.writeFile(join(dir, "model.safetensors"), encodeSafetensors(m));
}

async function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): Promise<void> {
  const path = join(dir, "config.json");
  const c = JSON.parse(await Deno.readTextFile(path));
  edit(c);
  await Deno.writeTextFile(path, JSON.stringify(c));
}

async function expectLoadError(setup: (dir: string) => Promise<void>, pattern: RegExp): Promise<void> {
  const dir = await copyFixture();
  try {
    await setup(dir);
    const before = tf.memory().numTensors;
    await assert.rejects(loadModel(dir), (err: Error) => {
      assert.match(err.message, pattern);
      return true;
    });
    assert.equal(tf.memory().numTensors, before, "a failed load leaves no tensor behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("malformed checkpoints are clear errors naming the file and the problem", async (t) => {
  await useBackend("wasm");
  const cases: [string, (dir: string) => Promise<void>, RegExp][] = [
    [
      "missing tensor",
      (d) => editWeights(d, (m) => m.delete("transformer.h.1.mlp.c_fc.bias")),
      /model\.safetensors: 1 tensor\(s\) missing: transformer\.h\.1\.mlp\.c_fc\.bias/,
    ],
    [
      "extra tensor",
      (d) =>
        editWeights(d, (m) => m.set("transformer.h.9.attn.c_attn.weight", { shape: [1], values: new Float32Array(1) })),
      /unexpected tensor\(s\) for a gpt2 model: 'transformer\.h\.9\.attn\.c_attn\.weight' in .*model\.safetensors/,
    ],
    [
      "wrong shape",
      (d) => editWeights(d, (m) => m.set("transformer.ln_f.bias", { shape: [31], values: new Float32Array(31) })),
      /model\.safetensors: tensor 'transformer\.ln_f\.bias' has shape \[31\] but config\.json implies \[32\]/,
    ],
    [
      "unsupported model_type",
      (d) => editConfig(d, (c) => c.model_type = "bert"),
      /config\.json': model_type "bert" is not supported \(supported: gpt2, llama, qwen2\)/,
    ],
    [
      "invalid config value",
      (d) => editConfig(d, (c) => c.n_head = 5),
      /config\.json': 'n_head': 'n_head' must divide 'n_embd' \(32\): current value is 5/,
    ],
    [
      "config not JSON",
      (d) => Deno.writeTextFile(join(d, "config.json"), "{oops"),
      /config\.json': the file is not valid JSON/,
    ],
    ["missing config", (d) => Deno.remove(join(d, "config.json")), /config\.json': the file does not exist/],
    [
      "truncated weights",
      async (d) => {
        const p = join(d, "model.safetensors");
        const bytes = await Deno.readFile(p);
        await Deno.writeFile(p, bytes.subarray(0, bytes.length - 100));
      },
      /model\.safetensors': tensor .* ends at byte \d+ of a \d+-byte data buffer \(truncated file\)/,
    ],
    [
      "corrupt header",
      async (d) => {
        const p = join(d, "model.safetensors");
        const bytes = await Deno.readFile(p);
        bytes.fill(0xff, 9, 14);
        await Deno.writeFile(p, bytes);
      },
      /model\.safetensors': the header is not valid UTF-8 JSON/,
    ],
    [
      "missing weights file",
      (d) => Deno.remove(join(d, "model.safetensors")),
      /neither model\.safetensors nor model\.safetensors\.index\.json exists/,
    ],
    [
      "vocab mismatch",
      (d) =>
        editConfig(d, (c) => c.vocab_size = 300).then(() =>
          editWeights(d, (m) => m.set("transformer.wte.weight", { shape: [300, 32], values: new Float32Array(9600) }))
        ),
      /tokenizer\.json has 317 tokens but config\.json vocab_size is 300/,
    ],
    ["missing tokenizer", (d) => Deno.remove(join(d, "tokenizer.json")), /tokenizer\.json/],
  ];
  for (const [name, setup, pattern] of cases) {
    await t.step(name, () => expectLoadError(setup, pattern));
  }
});

Deno.test("save then load reproduces the model exactly, in a layout PyTorch checkpoints share", async () => {
  await useBackend("wasm");
  const expected = await readExpected("gpt2_tiny");
  const out = await Deno.makeTempDir({ prefix: "ckpt_save_" });
  try {
    const loaded = await loadModel(fixturePath("gpt2_tiny"));
    await saveModel(loaded, out);
    const original = await readSafetensors(fixturePath("gpt2_tiny/model.safetensors"));
    const saved = decodeSafetensors(await Deno.readFile(join(out, "model.safetensors")));
    assert.deepEqual([...saved.tensors.keys()].sort(), [...original.tensors.keys()].sort());
    for (const [name, t] of original.tensors) assert.deepEqual(saved.tensors.get(name)!.values, t.values, name);
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
      assert.equal(await Deno.readTextFile(join(out, f)), await Deno.readTextFile(fixturePath(`gpt2_tiny/${f}`)));
    }
    assert.deepEqual([...Deno.readDirSync(out)].map((e) => e.name).sort(), [
      "config.json",
      "model.safetensors",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    const again = await loadModel(out);
    const pairs = expected.cases.map((c) => ({ promptIds: c.prompt_ids, completionIds: c.completion_ids }));
    const opts = { eosId: expected.eos_token_id, maxLength: 64 };
    const a = await scorePairs(loaded.model, pairs, opts);
    const b = await scorePairs(again.model, pairs, opts);
    assert.deepEqual(b, a);
    loaded.model.dispose();
    again.model.dispose();
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("loads GPT2Model-style names, sharded weights, ignored buffers and a tied lm_head", async () => {
  await useBackend("wasm");
  const expected = await readExpected("gpt2_tiny");
  const pairs = expected.cases.map((c) => ({ promptIds: c.prompt_ids, completionIds: c.completion_ids }));
  const opts = { eosId: expected.eos_token_id, maxLength: 64 };
  const dir = await copyFixture();
  try {
    const { tensors } = await readSafetensors(join(dir, "model.safetensors"));
    const plain = [...tensors].map(([k, v]) => [k.replace(/^transformer\./, ""), v] as const);
    const half = Math.floor(plain.length / 2);
    const shard = (entries: typeof plain) =>
      encodeSafetensors(entries.map(([k, v]) => [k, { shape: v.shape, values: v.values as Float32Array }]));
    await Deno.remove(join(dir, "model.safetensors"));
    await Deno.writeFile(join(dir, "model-00001-of-00002.safetensors"), shard(plain.slice(0, half)));
    await Deno.writeFile(
      join(dir, "model-00002-of-00002.safetensors"),
      shard([
        ...plain.slice(half),
        ["h.0.attn.bias", { dtype: "F32", shape: [1, 1, 2, 2], values: new Float32Array(4) }],
        ["lm_head.weight", tensors.get("transformer.wte.weight")!],
      ]),
    );
    const weightMap = Object.fromEntries(
      plain.map(([k], i) => [k, `model-0000${i < half ? 1 : 2}-of-00002.safetensors`]),
    );
    await Deno.writeTextFile(join(dir, "model.safetensors.index.json"), JSON.stringify({ weight_map: weightMap }));
    const loaded = await loadModel(dir);
    const scores = await scorePairs(loaded.model, pairs, opts);
    assertClose(scores.map((s) => s.logp), expected.cases.map((c) => c.logp_sum), 1e-4, "logp from shards");
    loaded.model.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a Llama-family config.json that cannot be computed is a clear error naming the field", async () => {
  const base = JSON.parse(await Deno.readTextFile(fixturePath("llama_tiny/config.json")));
  const problem = (edit: Record<string, unknown>) => {
    try {
      parseModelConfig(JSON.stringify({ ...base, ...edit }), "x/config.json");
    } catch (err) {
      return (err as Error).message;
    }
    return "no error";
  };
  assert.equal(problem({}), "no error");
  assert.match(
    problem({ num_key_value_heads: 3 }),
    /^Cannot load model config 'x\/config\.json': 'num_key_value_heads': 'num_key_value_heads' must divide 'num_attention_heads' \(4\): current value is 3$/,
  );
  assert.match(problem({ head_dim: 7 }), /'head_dim': the head size must be an even integer .*: current value is 7/);
  assert.match(
    problem({ rope_scaling: { rope_type: "dynamic", factor: 2 } }),
    /'rope_scaling\.rope_type': rope_type 'dynamic' is not supported \(supported: default, linear, llama3, yarn\)/,
  );
  assert.match(
    problem({ rope_scaling: { rope_type: "llama3", factor: 8 } }),
    /'rope_scaling\.low_freq_factor': 'rope_scaling\.low_freq_factor' is required for rope_type 'llama3'/,
  );
  assert.match(problem({ use_sliding_window: true }), /'use_sliding_window'/);
});
