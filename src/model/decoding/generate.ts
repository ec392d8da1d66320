/** Batched incremental decoding with a KV cache, stop strings, eos and streaming. */
import * as tf from "../tf.ts";
import { padBatch, type TokenBatch } from "../batch.ts";
import type { CausalLM, KVCache } from "../arch/causal_lm.ts";
import { sampleToken } from "./sampling.ts";
import type { GenerateOptions, Generation, TextCodec } from "./types.ts";
import { advance, appendStep, generations, lastLogits, planDecode } from "./_decode.ts";

export type { GenerateOptions, Generation, TextCodec, TokenEvent } from "./types.ts";

/** Generates a continuation for every prompt (token ids) in one batch. */
export async function generate(
  model: CausalLM,
  codec: TextCodec,
  prompts: number[][],
  options: GenerateOptions = {},
): Promise<Generation[]> {
  const { inputs, budget, rows, greedy } = planDecode(model.contextLength, codec, prompts, options);
  const useCache = options.useCache ?? true;
  let batch: TokenBatch = padBatch(inputs, codec.eosTokenId, "left");
  let cache: KVCache | undefined;
  try {
    for (let step = 0; step < budget && !options.signal?.aborted; step++) {
      const out: StepOutput = tf.tidy(() => nextLogits(model, batch, cache, useCache, greedy));
      if (cache && out.cache?.keys[0] !== cache.keys[0]) tf.dispose([...cache.keys, ...cache.values]);
      cache = out.cache;
      // After the prompt, room for every step's keys: each step then writes its keys in place.
      if (step === 0 && cache && budget > 1 && model.decodesInPlace()) cache = withRoom(cache, budget - 1);
      const values = await out.logits.data();
      out.logits.dispose();
      if (!greedy) options.onLogits?.(values as Float32Array, step);
      const V = values.length / rows.length;
      const next = rows.map((row, b) => {
        if (row.done) return codec.eosTokenId;
        const token = greedy
          ? values[b]!
          : sampleToken(values.subarray(b * V, (b + 1) * V) as Float32Array, options, row.rng);
        advance(row, b, token, codec, { ...options, last: step === budget - 1 });
        return token;
      });
      if (rows.every((r) => r.done)) break;
      batch = useCache
        ? appendStep(batch, next)
        : padBatch(inputs.map((p, b) => [...p, ...rows[b]!.tokens]), codec.eosTokenId, "left");
    }
  } finally {
    if (cache) tf.dispose([...cache.keys, ...cache.values]);
  }
  return generations(rows);
}

type StepOutput = { logits: tf.Tensor; cache?: KVCache };

/** The cache with room for `more` keys after those it holds (zeros, never attended to). Consumes `cache`. */
function withRoom(cache: KVCache, more: number): KVCache {
  const length = cache.keys[0]!.shape[2];
  const grow = (t: tf.Tensor4D) => tf.pad(t, [[0, 0], [0, 0], [0, more], [0, 0]]) as tf.Tensor4D;
  const grown = tf.tidy(() => ({ keys: cache.keys.map(grow), values: cache.values.map(grow), length }));
  tf.dispose([...cache.keys, ...cache.values]);
  return grown;
}

/** One forward step: the last position's logits [B, V] (or their argmax [B]) and, with caching, the extended cache. */
function nextLogits(
  model: CausalLM,
  batch: TokenBatch,
  cache: KVCache | undefined,
  useCache: boolean,
  argmax: boolean,
): StepOutput {
  const out = lastLogits(model, batch, cache, useCache);
  return { logits: argmax ? tf.argMax(out.logits, -1) : out.logits, cache: out.cache };
}
