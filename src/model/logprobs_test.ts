/**
 * The scoring layout: completions sharing a prompt's row must each see exactly prompt + itself, at the
 * positions they would have alone. (That the numbers then match PyTorch is checked in arch/registry_test.ts and
 * dpo/trainer_test.ts, on batches that share prompts.)
 */
import * as tf from "./tf.ts";
import assert from "node:assert/strict";
import fc from "fast-check";
import { buildScoringBatch, type ScoringBatch, scoringTensors, type TokenPair } from "./logprobs.ts";
import { useBackend } from "./_test_utils.ts";

const EOS = 0;

/**
 * For every scored token, what the query that predicts it sees: the ids of the keys its bias lets through, in
 * position order, each with its position id.
 */
async function contexts(batch: ScoringBatch): Promise<{ ids: number[]; positions: number[] }[]> {
  await useBackend("cpu", false);
  const input = scoringTensors(batch);
  const bias = await input.bias.data();
  tf.dispose([input.ids, input.positions, input.bias]);
  const T = batch.length;
  return Array.from(batch.positions, (flat) => {
    const b = Math.floor(flat / T);
    const seen = [...Array(T).keys()].filter((k) => bias[flat * T + k] === 0).map((k) => b * T + k);
    seen.sort((x, y) => batch.positionIds[x]! - batch.positionIds[y]!);
    return { ids: seen.map((k) => batch.ids[k]!), positions: seen.map((k) => batch.positionIds[k]!) };
  });
}

/** The contexts the scored tokens of `pairs` must see: each sequence alone, every prefix of it. */
function expectedContexts(pairs: TokenPair[]) {
  return pairs.flatMap((p) => {
    const prompt = p.promptIds.length > 0 ? p.promptIds : [EOS];
    const all = [...prompt, ...p.completionIds, EOS];
    return Array.from({ length: p.completionIds.length + 1 }, (_, t) => {
      const ids = all.slice(0, prompt.length + t);
      return { ids, positions: ids.map((_, i) => i) };
    });
  });
}

Deno.test("every scored token sees its own prompt and completion at their own positions, shared row or not", async () => {
  const tokens = fc.array(fc.integer({ min: 1, max: 9 }), { maxLength: 6 });
  const prompts = fc.array(tokens, { minLength: 1, maxLength: 3 });
  const cases = prompts.chain((pool) =>
    fc.array(
      fc.record({ promptIds: fc.constantFrom(...pool), completionIds: tokens }),
      { minLength: 1, maxLength: 7 },
    )
  );
  await fc.assert(
    fc.asyncProperty(cases, fc.boolean(), async (pairs, share) => {
      const batch = buildScoringBatch(pairs, { eosId: EOS, maxLength: 64, sharePrompts: share });
      assert.deepEqual(await contexts(batch), expectedContexts(pairs));
      assert.deepEqual(batch.counts, pairs.map((p) => p.completionIds.length + 1));
      assert.deepEqual([...batch.targets], pairs.flatMap((p) => [...p.completionIds, EOS]));
      assert.deepEqual([...batch.rows], pairs.flatMap((p, i) => Array(p.completionIds.length + 1).fill(i)));
      if (!share) assert.equal(batch.batch, pairs.length);
    }),
    { numRuns: 200 },
  );
});

Deno.test("a pair's completions share a row behind a long prompt, and not behind a one-token prompt", () => {
  const run = (n: number) => Array.from({ length: n }, (_, i) => 1 + (i % 9));
  const pair = (prompt: number[], rejected = 64) => [
    { promptIds: prompt, completionIds: run(64) },
    { promptIds: prompt, completionIds: run(rejected) },
  ];
  const long = buildScoringBatch([...pair(run(64), 40), ...pair(run(63), 40)], { eosId: EOS, maxLength: 1024 });
  assert.equal(long.batch, 2, "one row per prompt");
  assert.equal(long.length, 64 + 65 + 41);
  const short = buildScoringBatch([...pair([]), ...pair([3])], { eosId: EOS, maxLength: 1024 });
  assert.equal(short.batch, 4, "sharing a one-token prompt saves one token and doubles attention: one row each");
  assert.equal(buildScoringBatch(pair(run(64)), { eosId: EOS, maxLength: 1024, sharePrompts: false }).batch, 2);
});

Deno.test("a sequence longer than the context is refused even when it would share a row", () => {
  const pairs = [{ promptIds: [1, 2], completionIds: [3] }, { promptIds: [1, 2], completionIds: [3, 4, 5, 6] }];
  assert.throws(
    () => buildScoringBatch(pairs, { eosId: EOS, maxLength: 6 }),
    /Cannot score sequence 1: it has 7 tokens \(prompt 2, completion 4, eos 1\) but the model's context is 6/,
  );
  assert.equal(buildScoringBatch(pairs, { eosId: EOS, maxLength: 7 }).batch, 1, "positions, not slots, count");
});
