/** Batched incremental decoding with a KV cache, stop strings, eos and streaming. */
import * as tf from "./tf.ts";
import { padBatch, type TokenBatch } from "./batch.ts";
import type { CausalLM, KVCache } from "./causal_lm.ts";
import { sampleToken, type SamplingParams } from "./sampling.ts";
import { advance, appendStep, generations, lastLogits, planDecode } from "./_decode.ts";

/** One streamed token. */
export interface TokenEvent {
  /** Which prompt of the batch. */
  index: number;
  tokenId: number;
  /** Text that became final with this token (may be empty while a character or stop string is incomplete). */
  text: string;
}

/** Options for `generate`; sampling names follow Hugging Face's GenerationConfig. */
export interface GenerateOptions extends SamplingParams {
  /** Most tokens to generate per prompt. Default 64; the model's context may cut it shorter. */
  maxNewTokens?: number;
  /** Generation stops before the first occurrence of any of these strings. */
  stop?: string[];
  /** Stop when the model emits an end token: the codec's `eosTokenId` or one of its `stopTokenIds`. Default true. */
  stopAtEos?: boolean;
  /** Seed for sampling; the same seed, prompts and model give the same tokens. Default random. */
  seed?: number;
  /** Reuse keys and values of earlier tokens. Default true; false recomputes the whole prefix each step. */
  useCache?: boolean;
  /** Called for every generated token, in order. */
  onToken?: (event: TokenEvent) => void;
  /** Called with each step's next-token logits [B, V] (for tests and analysis). */
  onLogits?: (logits: Float32Array, step: number) => void;
  /** Stops generation early; what was generated so far is returned. */
  signal?: AbortSignal;
}

/** The tokenizer operations generation needs. */
export interface TextCodec {
  decode(ids: number[], options?: { skipSpecialTokens?: boolean }): string;
  eosTokenId: number;
  bosTokenId?: number;
  /** More ids that end generation, such as a chat template's end-of-turn (`<|im_end|>`); never part of the text. */
  stopTokenIds?: ReadonlySet<number>;
}

/** One finished sequence. */
export interface Generation {
  tokenIds: number[];
  /** Decoded text, cut before a stop string, without special tokens. */
  text: string;
  /** `stop`: an end token (eos, end-of-turn) or a stop string; `length`: the token budget or the context ran out. */
  finishReason: "stop" | "length";
}

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
      if (cache) tf.dispose([...cache.keys, ...cache.values]);
      cache = out.cache;
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
