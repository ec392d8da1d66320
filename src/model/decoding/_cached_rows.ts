/**
 * The KV cache of rows that decode together while rows join and leave. A joining group is left-padded
 * to the common key length; padding keys are zero and masked, so no row's result changes.
 */
import * as tf from "../tf.ts";
import type { TokenBatch } from "../batch.ts";
import type { KVCache } from "../arch/causal_lm.ts";

/** Rows with their cache: per layer keys and values [B, H, S, D], and which of the S keys are real. */
export interface CachedRows {
  cache: KVCache;
  /** [B, S] 1 for real keys, 0 for padding. */
  mask: Uint8Array;
  rows: number;
  /** S: keys per row, padding included. */
  width: number;
}

/** The rows as a batch with every key in the cache and no new token (what `appendStep` extends). */
export function cachedBatch(state: CachedRows): TokenBatch {
  return { ids: new Int32Array(0), mask: state.mask, batch: state.rows, length: 0, past: state.width };
}

/** Stacks `b`'s rows under `a`'s, left-padding the shorter cache with masked zero keys. Consumes both. */
export function mergeRows(a: CachedRows | undefined, b: CachedRows): CachedRows {
  if (!a) return b;
  const S = Math.max(a.width, b.width);
  const padTo = (t: tf.Tensor4D) => t.shape[2] === S ? t : tf.pad(t, [[0, 0], [0, 0], [S - t.shape[2], 0], [0, 0]]);
  const stack = (x: tf.Tensor4D[], y: tf.Tensor4D[]) =>
    x.map((t, l) => tf.concat([padTo(t), padTo(y[l]!)], 0) as tf.Tensor4D); // [Ba + Bb, H, S, D]
  const cache = tf.tidy(() => ({
    keys: stack(a.cache.keys, b.cache.keys),
    values: stack(a.cache.values, b.cache.values),
  }));
  disposeRows(a);
  disposeRows(b);
  const mask = new Uint8Array((a.rows + b.rows) * S);
  for (const [offset, part] of [[0, a], [a.rows, b]] as const) {
    for (let r = 0; r < part.rows; r++) {
      mask.set(part.mask.subarray(r * part.width, (r + 1) * part.width), (offset + r + 1) * S - part.width);
    }
  }
  return { cache, mask, rows: a.rows + b.rows, width: S };
}

/**
 * Keeps the rows `keep` (ascending indices) and drops the leading keys that are padding in all of them.
 * Consumes `state`; undefined when no row is kept.
 */
export function keepRows(state: CachedRows, keep: number[]): CachedRows | undefined {
  if (keep.length === 0) {
    disposeRows(state);
    return undefined;
  }
  const S = state.width;
  let from = S;
  for (const r of keep) {
    const first = state.mask.subarray(r * S, (r + 1) * S).indexOf(1);
    from = Math.min(from, first < 0 ? S : first);
  }
  if (from === S) from = S - 1; // keep one key: empty tensors are not worth the special cases
  if (keep.length === state.rows && from === 0) return state;
  const W = S - from;
  const select = (t: tf.Tensor4D) => {
    const rows = keep.length === state.rows ? t : tf.gather(t, keep, 0);
    return (from > 0 ? tf.slice(rows, [0, 0, from, 0], [-1, -1, W, -1]) : rows) as tf.Tensor4D; // [B', H, W, D]
  };
  const cache = tf.tidy(() => ({ keys: state.cache.keys.map(select), values: state.cache.values.map(select) }));
  disposeRows(state);
  const mask = new Uint8Array(keep.length * W);
  keep.forEach((r, i) => mask.set(state.mask.subarray(r * S + from, (r + 1) * S), i * W));
  return { cache, mask, rows: keep.length, width: W };
}

/** Frees the rows' cache. */
export function disposeRows(state: CachedRows): void {
  tf.dispose([...state.cache.keys, ...state.cache.values]);
}
