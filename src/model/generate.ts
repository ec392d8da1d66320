/** Batched incremental decoding with a KV cache, stop strings, eos and streaming. */
import * as tf from "./tf.ts";
import { forwardTensors, padBatch, type TokenBatch } from "./batch.ts";
import type { Gpt2Model, KVCache } from "./gpt2.ts";
import { createRng, sampleToken, type SamplingParams } from "./sampling.ts";

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
  /** Stop when the model emits its end-of-sequence token. Default true. */
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
}

/** One finished sequence. */
export interface Generation {
  tokenIds: number[];
  /** Decoded text, cut before a stop string, without special tokens. */
  text: string;
  /** `stop`: eos or a stop string; `length`: the token budget or the context ran out. */
  finishReason: "stop" | "length";
}

interface Row {
  tokens: number[];
  text: string;
  emitted: number;
  done: boolean;
  finishReason: "stop" | "length";
  rng: () => number;
}

/** Generates a continuation for every prompt (token ids) in one batch. */
export async function generate(
  model: Gpt2Model,
  codec: TextCodec,
  prompts: number[][],
  options: GenerateOptions = {},
): Promise<Generation[]> {
  const context = model.config.n_positions;
  const inputs = prompts.map((p) => (p.length > 0 ? p : [codec.bosTokenId ?? codec.eosTokenId]));
  const longest = Math.max(...inputs.map((p) => p.length));
  if (longest >= context) {
    throw new Error(
      `Cannot generate: a prompt has ${longest} tokens, leaving no room in the model's ${context}-token context`,
    );
  }
  const budget = Math.min(options.maxNewTokens ?? 64, context - longest);
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
  const rows: Row[] = inputs.map((_, b) => ({
    tokens: [],
    text: "",
    emitted: 0,
    done: false,
    finishReason: "length",
    rng: createRng(seed + b * 0x9e3779b1),
  }));
  const useCache = options.useCache ?? true;
  // Greedy picks on the device and reads B ids, not B x V logits (unless the caller wants the logits).
  const greedy = (options.temperature === 0 || options.topK === 1) && !options.onLogits;
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
  return rows.map((row) => ({ tokenIds: row.tokens, text: row.text, finishReason: row.finishReason }));
}

type StepOutput = { logits: tf.Tensor; cache?: KVCache };

/** One forward step: the last position's logits [B, V] (or their argmax [B]) and, with caching, the extended cache. */
function nextLogits(
  model: Gpt2Model,
  batch: TokenBatch,
  cache: KVCache | undefined,
  useCache: boolean,
  argmax: boolean,
): StepOutput {
  const out = model.forward({ ...forwardTensors(batch), cache }, useCache);
  const [B, T, C] = out.hidden.shape;
  const last = tf.reshape(tf.slice(out.hidden, [0, T - 1, 0], [B, 1, C]), [B, C]) as tf.Tensor2D; // [B, C]
  const logits = model.logits(last); // [B, V]
  return { logits: argmax ? tf.argMax(logits, -1) : logits, cache: out.cache };
}

/** The next step's batch when the cache holds everything before it: one new token per row. */
function appendStep(batch: TokenBatch, next: number[]): TokenBatch {
  const B = batch.batch;
  const S = batch.past + batch.length;
  const mask = new Uint8Array(B * (S + 1));
  for (let b = 0; b < B; b++) {
    mask.set(batch.mask.subarray(b * S, (b + 1) * S), b * (S + 1));
    mask[b * (S + 1) + S] = 1;
  }
  return { ids: Int32Array.from(next), mask, batch: B, length: 1, past: S };
}

/** Records a token, finds eos or stop strings, and streams the text that became final. */
function advance(
  row: Row,
  index: number,
  token: number,
  codec: TextCodec,
  options: GenerateOptions & { last: boolean },
): void {
  const stops = options.stop ?? [];
  if (token === codec.eosTokenId && (options.stopAtEos ?? true)) {
    row.done = true;
    row.finishReason = "stop";
  } else {
    row.tokens.push(token);
    row.text = codec.decode(row.tokens, { skipSpecialTokens: true });
    let cut = -1;
    for (const s of stops) {
      const at = s.length > 0 ? row.text.indexOf(s) : -1;
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      row.text = row.text.slice(0, cut);
      row.done = true;
      row.finishReason = "stop";
    } else if (options.last) {
      row.done = true;
    }
  }
  // Hold back an incomplete UTF-8 character and any tail that may begin a stop string.
  let final = row.done ? row.text.length : stableLength(row.text, stops);
  final = Math.max(final, row.emitted);
  options.onToken?.({ index, tokenId: token, text: row.text.slice(row.emitted, final) });
  row.emitted = final;
}

function stableLength(text: string, stops: string[]): number {
  let end = text.length;
  while (end > 0 && text[end - 1] === "\uFFFD") end--;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, end); k > 0; k--) {
      if (text.slice(end - k, end) === s.slice(0, k)) {
        end -= k;
        break;
      }
    }
  }
  return end;
}
