/** Generation ends on every end token a chat model has: eos, the configs' eos lists and the template's end-of-turn. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type LoadedModel, loadModel } from "../io/checkpoint.ts";
import { assertNoLeak, fixturePath, readExpected, useBackend } from "../_test_utils.ts";
import { writeChatModel } from "../_test_chat_model.ts";
import { generate, type TokenEvent } from "./generate.ts";
import { DecodeScheduler } from "./scheduler.ts";

async function withModelDir(dir: string, fn: (m: LoadedModel) => Promise<void>): Promise<void> {
  await useBackend("wasm");
  const loaded = await loadModel(dir, { trainable: false });
  try {
    await fn(loaded);
  } finally {
    loaded.model.dispose();
    await Deno.remove(dir, { recursive: true });
  }
}

const GREEDY = { temperature: 0, maxNewTokens: 12 };

Deno.test("generation stops on the template's end-of-turn token, in generate and in the scheduler", async () => {
  // gpt2_tiny's greedy continuations (PyTorch): the first emits 279 at step 4, the second never does.
  const [stops, runs] = (await readExpected("gpt2_tiny")).greedy;
  const END = 279;
  assert.equal(stops!.generated_ids.indexOf(END), 4);
  assert.ok(!runs!.generated_ids.includes(END));
  const { dir, endToken } = await writeChatModel(END);
  await withModelDir(dir, async ({ model, tokenizer }) => {
    assert.equal(tokenizer.endOfTurnId, END);
    assert.equal(tokenizer.eosTokenId, 316, "eos stays what it was: padding and plain text use it");
    assert.deepEqual([...tokenizer.stopTokenIds].sort((a, b) => a - b), [END, 316]);
    const kept = stops!.generated_ids.slice(0, 4);
    const text = tokenizer.decode(kept, { skipSpecialTokens: true });
    assert.ok(!text.includes(tokenizer.decode([END])), "the end-of-turn is not part of the text");
    await generate(model, tokenizer, [[1, 2]], { maxNewTokens: 2 }); // the backend's own first-use tensors
    await assertNoLeak(async () => {
      for (const useCache of [true, false]) {
        const events: TokenEvent[] = [];
        const [g] = await generate(model, tokenizer, [stops!.prompt_ids], {
          ...GREEDY,
          useCache,
          onToken: (e) => events.push(e),
        });
        assert.deepEqual(g, { tokenIds: kept, text, finishReason: "stop" });
        assert.equal(events.at(-1)!.tokenId, END, "the stop token is streamed as the last event, with no text");
        assert.equal(events.map((e) => e.text).join(""), text);
      }
      const [full] = await generate(model, tokenizer, [stops!.prompt_ids], { ...GREEDY, stopAtEos: false });
      assert.deepEqual(full!.tokenIds, stops!.generated_ids, "without end tokens it goes on as PyTorch does");
      assert.ok(!full!.text.includes(endToken), "special tokens never reach the text");

      const scheduler = new DecodeScheduler(model, tokenizer);
      const [batched, alone] = await Promise.all([
        scheduler.submit([stops!.prompt_ids, runs!.prompt_ids], GREEDY),
        scheduler.submit([stops!.prompt_ids], GREEDY),
      ]);
      await scheduler.close();
      assert.deepEqual(batched!.map((g) => [g.tokenIds, g.finishReason]), [
        [kept, "stop"],
        [runs!.generated_ids, "length"],
      ]);
      assert.deepEqual(alone, [{ tokenIds: kept, text, finishReason: "stop" }]);
    });
  });
});

Deno.test("every eos id of config.json and generation_config.json ends generation", async () => {
  const [greedy] = (await readExpected("gpt2_tiny")).greedy;
  const ids = greedy!.generated_ids; // [68, 237, 42, ...]
  for (const files of [{ config: [316, ids[2]!] }, { config: 316, generation: [ids[1]!, 316] }]) {
    const dir = await Deno.makeTempDir({ prefix: "eos_lists_" });
    const src = fixturePath("gpt2_tiny");
    for (const f of ["model.safetensors", "tokenizer.json", "tokenizer_config.json"]) {
      await Deno.copyFile(join(src, f), join(dir, f));
    }
    const config = JSON.parse(await Deno.readTextFile(join(src, "config.json")));
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify({ ...config, eos_token_id: files.config }));
    if (files.generation) {
      await Deno.writeTextFile(join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: files.generation }));
    }
    const at = files.generation ? 1 : 2;
    await withModelDir(dir, async ({ model, tokenizer }) => {
      assert.equal(tokenizer.eosTokenId, 316);
      assert.equal(tokenizer.endOfTurnId, undefined, "gpt2_tiny's template ends turns with plain text");
      assert.ok(tokenizer.stopTokenIds.has(ids[at]!));
      const [g] = await generate(model, tokenizer, [greedy!.prompt_ids], GREEDY);
      assert.deepEqual([g!.tokenIds, g!.finishReason], [ids.slice(0, at), "stop"]);
    });
  }
});
