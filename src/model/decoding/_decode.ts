/** What `generate` and the decoding scheduler share: prompt checks, per-row state, the step batch, token bookkeeping. */
import * as tf from "../tf.ts";
import { forwardTensors, type TokenBatch } from "../batch.ts";
import type { CausalLM, KVCache } from "../arch/causal_lm.ts";
import { createRng } from "./sampling.ts";
import type { GenerateOptions, Generation, TextCodec } from "./types.ts";

/** One sequence being generated. */
export interface DecodeRow {
  tokens: number[];
  text: string;
  /** Characters of `text` already streamed. */
  emitted: number;
  done: boolean;
  finishReason: "stop" | "length";
  rng: () => number;
}

/** A request checked and ready to decode: its prompts, its token budget and one row per prompt. */
export interface DecodePlan {
  /** The prompts, an empty one replaced by bos (or eos). */
  inputs: number[][];
  /** Steps the request may take: `maxNewTokens`, cut so that the longest prompt stays within the context. */
  budget: number;
  rows: DecodeRow[];
  /** Whether every row takes the argmax: it can then be picked on the device. */
  greedy: boolean;
}

/** Checks prompts against the model's context and sets up their rows, seeded as `seed + b * 0x9e3779b1`. */
export function planDecode(
  context: number,
  codec: TextCodec,
  prompts: number[][],
  options: GenerateOptions,
): DecodePlan {
  const inputs = prompts.map((p) => (p.length > 0 ? p : [codec.bosTokenId ?? codec.eosTokenId]));
  const longest = Math.max(...inputs.map((p) => p.length));
  if (longest >= context) {
    throw new Error(
      `Cannot generate: a prompt has ${longest} tokens, leaving no room in the model's ${context}-token context`,
    );
  }
  const budget = Math.min(options.maxNewTokens ?? 64, context - longest);
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
  const rows = inputs.map((_, b): DecodeRow => ({
    tokens: [],
    text: "",
    emitted: 0,
    done: false,
    finishReason: "length",
    rng: createRng(seed + b * 0x9e3779b1),
  }));
  // Greedy reads B ids, not B x V logits (unless the caller wants the logits).
  const greedy = (options.temperature === 0 || options.topK === 1) && !options.onLogits;
  return { inputs, budget, rows, greedy };
}

/** The results of finished (or aborted) rows. */
export function generations(rows: DecodeRow[]): Generation[] {
  return rows.map((row) => ({ tokenIds: row.tokens, text: row.text, finishReason: row.finishReason }));
}

/**
 * One forward step: the last position's logits [B, V] and, with caching, the cache extended by this
 * step's keys and values. Without a cache (a prefill), identical rows run once and are copied: n samples of
 * one prompt prefill it once. Synchronous; call inside `tf.tidy`.
 */
export function lastLogits(
  model: CausalLM,
  batch: TokenBatch,
  cache: KVCache | undefined,
  withCache: boolean,
): { logits: tf.Tensor2D; cache?: KVCache } {
  const distinct = cache ? undefined : distinctRows(batch);
  if (distinct) {
    const out = lastLogits(model, distinct.rows, undefined, withCache);
    const index = tf.tensor1d(distinct.source, "int32");
    const spread = <T extends tf.Tensor>(t: T) => tf.gather(t, index, 0) as T;
    const copies = out.cache && { keys: out.cache.keys.map(spread), values: out.cache.values.map(spread) };
    return { logits: spread(out.logits), cache: copies };
  }
  const out = model.forward({ ...forwardTensors(batch), cache }, withCache);
  const [B, T, C] = out.hidden.shape;
  const last = tf.reshape(tf.slice(out.hidden, [0, T - 1, 0], [B, 1, C]), [B, C]) as tf.Tensor2D; // [B, C]
  return { logits: model.logits(last), cache: out.cache }; // [B, V]
}

/**
 * The distinct rows of a batch without a cache (ids and mask alike) and, for every row, the index of its
 * distinct row; undefined when every row is distinct.
 */
function distinctRows(batch: TokenBatch): { rows: TokenBatch; source: Int32Array } | undefined {
  const { batch: B, length: T, ids, mask } = batch;
  const index = new Map<string, number>();
  const source = new Int32Array(B);
  const kept: number[] = [];
  for (let b = 0; b < B; b++) {
    const key = `${ids.subarray(b * T, (b + 1) * T).join(",")}/${mask.subarray(b * T, (b + 1) * T).join("")}`;
    if (!index.has(key)) {
      index.set(key, kept.length);
      kept.push(b);
    }
    source[b] = index.get(key)!;
  }
  if (kept.length === B) return undefined;
  const rows = { ids: new Int32Array(kept.length * T), mask: new Uint8Array(kept.length * T), batch: kept.length };
  kept.forEach((b, i) => {
    rows.ids.set(ids.subarray(b * T, (b + 1) * T), i * T);
    rows.mask.set(mask.subarray(b * T, (b + 1) * T), i * T);
  });
  return { rows: { ...rows, length: T, past: 0 }, source };
}

/** The next step's batch when the cache holds every key of `batch`: one new token per row. */
export function appendStep(batch: TokenBatch, next: number[]): TokenBatch {
  const B = batch.batch;
  const S = batch.past + batch.length;
  const mask = new Uint8Array(B * (S + 1));
  for (let b = 0; b < B; b++) {
    mask.set(batch.mask.subarray(b * S, (b + 1) * S), b * (S + 1));
    mask[b * (S + 1) + S] = 1;
  }
  return { ids: Int32Array.from(next), mask, batch: B, length: 1, past: S };
}

/** Records a token, finds end tokens (eos, end-of-turn) or stop strings, and streams the text that became final. */
export function advance(
  row: DecodeRow,
  index: number,
  token: number,
  codec: TextCodec,
  options: GenerateOptions & { last: boolean },
): void {
  const stops = options.stop ?? [];
  const ends = token === codec.eosTokenId || codec.stopTokenIds?.has(token) === true;
  if (ends && (options.stopAtEos ?? true)) {
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
