/**
 * Every architecture checked against PyTorch fixtures on every backend: GPT-2 (scripts/make_fixtures.py),
 * Llama with GQA and a sharded checkpoint, Llama with llama3 RoPE scaling, an explicit head_dim and an
 * untied head, and Qwen2 with q/k/v biases and yarn (scripts/make_llama_fixtures.py).
 */
import * as tf from "../tf.ts";
import assert from "node:assert/strict";
import { type LoadedModel, loadModel } from "../io/checkpoint.ts";
import { assertClose, assertNoLeak, fixturePath, readExpected, useBackend, webgpuTestable } from "../_test_utils.ts";
import { buildScoringBatch, scorePairs, sequenceLogProbs, tokenLogProbs } from "../logprobs.ts";
import { forwardTensors, padBatch } from "../batch.ts";
import { generate } from "../decoding/generate.ts";
import { SUPPORTED_MODEL_TYPES } from "./registry.ts";

const MODELS = ["gpt2_tiny", "gpt2_tiny_gelu", "llama_tiny", "llama_tiny_llama3", "qwen2_tiny"] as const;
const VARIANTS: { backend: "wasm" | "cpu" | "webgpu"; native: boolean; label: string }[] = [
  { backend: "wasm", native: true, label: "wasm+blas" },
  { backend: "wasm", native: false, label: "wasm" },
  { backend: "cpu", native: false, label: "cpu" },
];
if (await webgpuTestable()) VARIANTS.push({ backend: "webgpu", native: false, label: "webgpu" });

Deno.test("every registered model_type has a PyTorch fixture below", async () => {
  const covered = new Set<string>();
  for (const name of MODELS) {
    covered.add(JSON.parse(await Deno.readTextFile(fixturePath(`${name}/config.json`))).model_type);
  }
  assert.deepEqual(SUPPORTED_MODEL_TYPES.filter((t) => !covered.has(t)), [], "model types with no fixture");
});

async function withModel(name: string, fn: (m: LoadedModel) => Promise<void>): Promise<void> {
  const loaded = await loadModel(fixturePath(name));
  try {
    await fn(loaded);
  } finally {
    loaded.model.dispose();
  }
}

for (const v of VARIANTS) {
  for (const name of MODELS) {
    Deno.test(`${name} on ${v.label}: tokenizer ids, log-probs and logits match PyTorch`, async () => {
      await useBackend(v.backend, v.native);
      const expected = await readExpected(name);
      await withModel(name, async ({ model, tokenizer }) => {
        await assertNoLeak(async () => {
          assert.equal(tokenizer.eosTokenId, expected.eos_token_id);
          for (const c of expected.cases) {
            assert.deepEqual(tokenizer.encode(c.prompt), c.prompt_ids, `prompt ids of ${JSON.stringify(c.prompt)}`);
            assert.deepEqual(tokenizer.encode(c.completion), c.completion_ids, "completion ids");
          }
          const pairs = expected.cases.map((c) => ({ promptIds: c.prompt_ids, completionIds: c.completion_ids }));
          const opts = { eosId: expected.eos_token_id, maxLength: model.contextLength };
          const sums = await scorePairs(model, pairs, { ...opts, batchSize: 1 });
          assertClose(sums.map((s) => s.logp), expected.cases.map((c) => c.logp_sum), 1e-4, "logp_sum");
          assert.deepEqual(sums.map((s) => s.nTokens), expected.cases.map((c) => c.n_tokens));
          const means = await scorePairs(model, pairs, { ...opts, average: true });
          assertClose(means.map((s) => s.logp), expected.cases.map((c) => c.logp_mean), 1e-4, "logp_mean");
          const perToken = tf.tidy(() => tokenLogProbs(model, buildScoringBatch(pairs, opts)));
          assertClose(await perToken.data(), expected.cases.flatMap((c) => c.token_logps), 1e-4, "token_logps");
          perToken.dispose();
          // Each case twice: the copies share one row behind one copy of the prompt, and both must read PyTorch's.
          const twice = buildScoringBatch(pairs.flatMap((p) => [p, p]), opts);
          assert.ok(twice.batch < 2 * pairs.length, "copies share rows");
          const shared = tf.tidy(() => sequenceLogProbs(model, twice));
          assertClose(await shared.data(), expected.cases.flatMap((c) => [c.logp_sum, c.logp_sum]), 1e-4, "shared");
          shared.dispose();
          for (const l of expected.logits) {
            const ids = expected.cases[l.case_index]!.input_ids;
            const logits = tf.tidy(() => {
              const { hidden } = model.forward(forwardTensors(padBatch([ids], 0, "right")));
              return model.logits(tf.reshape(hidden, [ids.length, -1]) as tf.Tensor2D);
            });
            assert.deepEqual(logits.shape, l.shape);
            assertClose(await logits.data(), l.values.flat(), 1e-4, `logits of case ${l.case_index}`);
            logits.dispose();
          }
        }, "scoring");
      });
    });
  }

  for (const name of MODELS) {
    Deno.test(`${name} on ${v.label}: gradients of the summed log-probs match PyTorch`, async () => {
      await useBackend(v.backend, v.native);
      const expected = await readExpected(name);
      await withModel(name, async ({ model }) => {
        await assertNoLeak(async () => {
          const pairs = expected.cases.map((c) => ({ promptIds: c.prompt_ids, completionIds: c.completion_ids }));
          const batch = buildScoringBatch(pairs, { eosId: expected.eos_token_id, maxLength: model.contextLength });
          const { value, grads } = tf.variableGrads(() => tf.sum(tokenLogProbs(model, batch)) as tf.Scalar);
          const total = expected.cases.reduce((a, c) => a + c.logp_sum, 0);
          assertClose([await value.data()].flatMap((d) => [...d]), [total], 1e-3, "summed logp");
          for (const [pname, g] of Object.entries(expected.grads)) {
            const ours = grads[model.params.get(pname)!.name];
            assert.ok(ours, `gradient for ${pname}`);
            assert.deepEqual(ours.shape, g.shape);
            assertClose(await ours.data(), g.values, 1e-4, `grad ${pname}`);
          }
          tf.dispose([value, ...Object.values(grads)]);
        }, "gradient");
      });
    });
  }

  for (const name of MODELS) {
    Deno.test(`${name} on ${v.label}: greedy generation matches PyTorch, cached equals recomputed`, async () => {
      await useBackend(v.backend, v.native);
      const expected = await readExpected(name);
      await withModel(name, async ({ model, tokenizer }) => {
        await assertNoLeak(async () => {
          for (const g of expected.greedy) {
            const logits: Float32Array[][] = [[], []];
            const runs = await Promise.all(
              [true, false].map((useCache, i) =>
                generate(model, tokenizer, [g.prompt_ids], {
                  temperature: 0,
                  maxNewTokens: g.generated_ids.length,
                  stopAtEos: false,
                  useCache,
                  onLogits: (l) => logits[i]!.push(l.slice()),
                })
              ),
            );
            assert.deepEqual(runs[0]![0]!.tokenIds, g.generated_ids, `greedy from ${JSON.stringify(g.prompt)}`);
            assert.deepEqual(runs[1]![0]!.tokenIds, g.generated_ids, "greedy without cache");
            logits[0]!.forEach((l, step) => assertClose(l, logits[1]![step]!, 1e-4, `step ${step} logits`));
          }
        }, "generation");
      });
    });
  }
}

Deno.test("llama-family chat fixtures: the template, special tokens and an answer ended by <|im_end|> match PyTorch", async () => {
  await useBackend("wasm");
  for (const name of ["llama_tiny", "llama_tiny_llama3", "qwen2_tiny"]) {
    const { chat } = await readExpected(name);
    await withModel(name, async ({ model, tokenizer }) => {
      assert.equal(tokenizer.applyChatTemplate(chat!.messages, { addGenerationPrompt: true }), chat!.text);
      assert.deepEqual(tokenizer.encode(chat!.text), chat!.ids, `${name}: special tokens split out before BPE`);
      const pair = { promptIds: chat!.ids, completionIds: chat!.answer_ids };
      const [score] = await scorePairs(model, [pair], { eosId: chat!.end_token_id, maxLength: model.contextLength });
      assertClose([score!.logp], [chat!.logp_sum], 1e-4, `${name}: answer log-prob`);
    });
  }
});

for (const name of ["gpt2_tiny", "qwen2_tiny"]) {
  Deno.test(`${name}: batching and padding never change a log-prob`, async () => {
    await useBackend("wasm");
    const expected = await readExpected(name);
    await withModel(name, async ({ model }) => {
      const pairs = expected.cases.map((c) => ({ promptIds: c.prompt_ids, completionIds: c.completion_ids }));
      const opts = { eosId: expected.eos_token_id, maxLength: 64 };
      const alone = await scorePairs(model, pairs, { ...opts, batchSize: 1 });
      const together = await scorePairs(model, pairs, { ...opts, batchSize: pairs.length });
      const reversed = (await scorePairs(model, [...pairs].reverse(), { ...opts, batchSize: 3 })).reverse();
      assertClose(together.map((s) => s.logp), alone.map((s) => s.logp), 1e-5, "batched vs alone");
      assertClose(reversed.map((s) => s.logp), alone.map((s) => s.logp), 1e-5, "other batching vs alone");
    });
  });

  Deno.test(`${name}: batched generation with left padding equals each prompt alone`, async () => {
    await useBackend("wasm");
    const expected = await readExpected(name);
    await withModel(name, async ({ model, tokenizer }) => {
      const prompts = [expected.greedy[0]!.prompt_ids, expected.cases[0]!.prompt_ids, expected.greedy[1]!.prompt_ids];
      const opts = { temperature: 0, maxNewTokens: 10, stopAtEos: false };
      const batched = await generate(model, tokenizer, prompts, opts);
      for (const [i, p] of prompts.entries()) {
        const [alone] = await generate(model, tokenizer, [p], opts);
        assert.deepEqual(batched[i]!.tokenIds, alone!.tokenIds, `prompt ${i}`);
      }
    });
  });
}

Deno.test("sampling: a seed reproduces tokens, stop strings cut the text, streaming adds up", async () => {
  await useBackend("wasm");
  await withModel("gpt2_tiny", async ({ model, tokenizer }) => {
    const prompt = [tokenizer.encode("The cat sat on the")];
    const opts = { temperature: 1.2, topK: 50, topP: 0.95, maxNewTokens: 20, seed: 7, stopAtEos: false };
    const a = await generate(model, tokenizer, prompt, opts);
    const b = await generate(model, tokenizer, prompt, opts);
    const c = await generate(model, tokenizer, prompt, { ...opts, seed: 8 });
    assert.deepEqual(a[0]!.tokenIds, b[0]!.tokenIds);
    assert.notDeepEqual(a[0]!.tokenIds, c[0]!.tokenIds);
    const text = a[0]!.text;
    assert.ok(text.length > 4, `generated text ${JSON.stringify(text)}`);
    const stop = text.slice(2, 4);
    let streamed = "";
    const cut = await generate(model, tokenizer, prompt, { ...opts, stop: [stop], onToken: (e) => streamed += e.text });
    assert.equal(cut[0]!.text, text.slice(0, text.indexOf(stop)));
    assert.equal(cut[0]!.finishReason, "stop");
    assert.equal(streamed, cut[0]!.text);
    const greedy = await generate(model, tokenizer, prompt, { temperature: 0, maxNewTokens: 5, stopAtEos: false });
    assert.equal(greedy[0]!.finishReason, "length");
    assert.equal(greedy[0]!.tokenIds.length, 5);
  });
});

Deno.test("generation leaks no tensor per step", async () => {
  await useBackend("wasm");
  await withModel("gpt2_tiny", async ({ model, tokenizer }) => {
    const prompt = [tokenizer.encode("Hi"), tokenizer.encode("Question: what")];
    await generate(model, tokenizer, prompt, { maxNewTokens: 2, seed: 1 });
    const before = tf.memory().numTensors;
    await generate(model, tokenizer, prompt, { maxNewTokens: 30, seed: 1, stopAtEos: false });
    assert.equal(tf.memory().numTensors, before);
  });
});
