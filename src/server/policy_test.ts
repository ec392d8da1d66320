import assert from "node:assert/strict";
import { loadModel } from "../model/io/checkpoint.ts";
import { fixturePath, useBackend } from "../model/_test_utils.ts";
import { PolicyHolder } from "./policy.ts";
import { sampleResponses } from "./_sample.ts";

async function version(n: number) {
  const { model, tokenizer } = await loadModel(fixturePath("gpt2_tiny"), { trainable: false });
  return { model, tokenizer, version: n };
}

Deno.test("a retired version's loop finishes its requests before its weights are freed", async () => {
  await useBackend("wasm");
  const [first, second] = [await version(1), await version(2)];
  const policy = new PolicyHolder(first);
  const options = { temperature: 0, maxNewTokens: 20, stopAtEos: false };
  let swapped = false;
  const running = policy.use((p) =>
    sampleResponses(p, "Once upon a time", 2, {
      ...options,
      onToken: () => {
        if (swapped) return;
        swapped = true;
        policy.swap(second);
      },
    })
  );
  const [a, b] = await running;
  assert.ok(swapped);
  assert.equal(a!.tokenIds.length, 20);
  assert.deepEqual(a!.tokenIds, b!.tokenIds);
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(first.model.params.size, 0, "v1 freed after its last request");
  assert.equal(policy.version, 2);
  const [again] = await policy.use((p) => sampleResponses(p, "Once upon a time", 1, options));
  assert.deepEqual(again!.tokenIds, a!.tokenIds, "v2 has the same weights");
  policy.dispose();
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(second.model.params.size, 0);
});

Deno.test("batching off: each request runs its own generate", async () => {
  await useBackend("wasm");
  const v = await version(1);
  const batched = new PolicyHolder(v);
  const alone = new PolicyHolder(v, { batching: false });
  const options = { temperature: 0, maxNewTokens: 6 };
  const [x] = await batched.use((p) => sampleResponses(p, "Hi", 1, options));
  const [y] = await alone.use((p) => sampleResponses(p, "Hi", 1, options));
  assert.deepEqual(x!.tokenIds, y!.tokenIds);
  assert.equal(alone.decoding, undefined);
  assert.ok(batched.decoding!.finished === 1);
  alone.dispose();
  assert.equal(v.model.params.size, 0);
});
