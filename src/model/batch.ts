/** Padded batches of token sequences and the masks, positions and attention bias they imply. */
import * as tf from "./tf.ts";
import type { ForwardInput } from "./arch/causal_lm.ts";

/** Added to attention scores a query must not see: exp() of it is exactly 0 in f32. */
export const MASKED = -1e9;

/**
 * A rectangular batch in row-major JS arrays. `mask` is 1 for real tokens and 0
 * for padding, for every key position seen so far (past and current tokens).
 */
export interface TokenBatch {
  /** [B, T] ids of this call's tokens; padding slots hold `padId`. */
  ids: Int32Array;
  /** [B, S] 1 for real tokens, 0 for padding, over all S = P + T keys. */
  mask: Uint8Array;
  batch: number;
  /** T: this call's tokens per row. */
  length: number;
  /** P: tokens already in the KV cache. */
  past: number;
}

/** Pads rows to one length; `side` says where the padding goes. */
export function padBatch(rows: number[][], padId: number, side: "left" | "right"): TokenBatch {
  const B = rows.length;
  const T = Math.max(1, ...rows.map((r) => r.length));
  const ids = new Int32Array(B * T).fill(padId);
  const mask = new Uint8Array(B * T);
  rows.forEach((row, b) => {
    const start = side === "left" ? T - row.length : 0;
    for (let t = 0; t < row.length; t++) {
      ids[b * T + start + t] = row[t]!;
      mask[b * T + start + t] = 1;
    }
  });
  return { ids, mask, batch: B, length: T, past: 0 };
}

/**
 * Tensors for `CausalLM.forward`: ids, positions counting real tokens only
 * (so left padding never shifts a sequence), and a causal bias that also hides
 * padding keys. The caller disposes them (or builds them inside a tidy).
 */
export function forwardTensors(batch: TokenBatch): Omit<ForwardInput, "cache"> {
  const { batch: B, length: T, past: P, mask } = batch;
  const S = P + T;
  const positions = new Int32Array(B * T);
  const bias = new Float32Array(B * T * S);
  for (let b = 0; b < B; b++) {
    let seen = 0;
    for (let s = 0; s < S; s++) {
      const real = mask[b * S + s] === 1;
      if (real) seen++;
      // A query at key index s is this call's token t = s - P.
      if (s >= P) positions[b * T + s - P] = Math.max(seen - 1, 0);
    }
    for (let t = 0; t < T; t++) {
      const row = (b * T + t) * S;
      for (let s = 0; s < S; s++) {
        if (s > P + t || mask[b * S + s] === 0) bias[row + s] = MASKED;
      }
    }
  }
  return {
    ids: tf.tensor2d(batch.ids, [B, T], "int32"),
    positions: tf.tensor2d(positions, [B, T], "int32"),
    bias: tf.tensor4d(bias, [B, 1, T, S]),
  };
}
