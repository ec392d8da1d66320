/** The decoding kernels give what the composed ops give, with the cache written in place or extended. */
import assert from "node:assert/strict";
import { loadModel } from "../io/checkpoint.ts";
import { generate } from "../decoding/generate.ts";
import { DecodeScheduler } from "../decoding/scheduler.ts";
import { assertClose, assertNoLeak, fixturePath, useBackend } from "../_test_utils.ts";

/** Prompts of different lengths, so that rows are left-padded and the padding keys masked. */
const PROMPTS = [[5, 17, 3], [40, 2, 9, 11, 60, 7, 1], [88]];

Deno.test("decoding kernels: the same logits and tokens as the composed ops, in place and extended, no leak", async () => {
  await useBackend("wasm");
  const { model } = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  const codec = { eosTokenId: 316, decode: (ids: number[]) => ids.join(" ") };
  try {
    assert.ok(model.decodesInPlace(), "GPT-2 on wasm decodes on the kernels");
    const run = async (useCache: boolean) => {
      const logits: Float32Array[] = [];
      const out = await generate(model, codec, PROMPTS, {
        temperature: 0,
        topK: 0,
        maxNewTokens: 9,
        stopAtEos: false,
        useCache,
        onLogits: (l) => logits.push(l.slice()),
      });
      return { tokens: out.map((g) => g.tokenIds), logits };
    };
    await run(true); // the backend's own first-use tensors
    await assertNoLeak(async () => {
      // With the cache every step after the prompt runs on the kernels, writing keys in place; without it
      // every step recomputes the whole prefix with composed ops.
      const kernels = await run(true);
      const composed = await run(false);
      assert.deepEqual(kernels.tokens, composed.tokens);
      assert.equal(kernels.logits.length, 9);
      kernels.logits.forEach((l, step) => assertClose(l, composed.logits[step]!, 1e-5, `step ${step}`));
      // The scheduler's cache grows by one key a step (the kernel that extends it), rows joining and leaving.
      const scheduler = new DecodeScheduler(model, codec);
      const alone = await Promise.all(
        PROMPTS.map((p, i) => scheduler.submit([p], { temperature: 0, maxNewTokens: 9 - 2 * i, stopAtEos: false })),
      );
      await scheduler.close();
      alone.forEach(([g], i) => assert.deepEqual(g!.tokenIds, kernels.tokens[i]!.slice(0, 9 - 2 * i)));
    }, "decoding");
  } finally {
    model.dispose();
  }
});
