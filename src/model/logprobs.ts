/**
 * Sequence log-probabilities, the number DPO is made of:
 * ids = encode(prompt) ++ encode(completion) ++ [eos], and log π(y|x) sums the
 * log-probs of the completion tokens and the eos (for a chat answer, its template's end-of-turn).
 */
import * as tf from "./tf.ts";
import { forwardTensors, MASKED, padBatch } from "./batch.ts";
import type { CausalLM, ForwardInput } from "./arch/causal_lm.ts";
import { customOp } from "./kernels/_ops.ts";
import { fusedTargetLogSoftmax, fusedTargetLogSoftmaxBackward, trainKernelsApply } from "./kernels/_train_kernels.ts";

/** A prompt and completion as token ids, without the eos. */
export interface TokenPair {
  promptIds: number[];
  completionIds: number[];
  /**
   * The token that ends this completion, instead of `ScoringOptions.eosId`: a chat answer ends with its
   * template's end-of-turn (`<|im_end|>`), the token the policy stops on, not with eos.
   */
  eosId?: number;
}

/**
 * Sequences laid out for one forward pass, plus where each scored token sits in it. Completions of the same
 * prompt can share a row after one copy of it (`ScoringOptions.sharePrompts`): each attends to the prompt and
 * to itself, never to the others, and continues the prompt's positions, so its log-probs are those of
 * prompt + completion alone while the prompt runs once instead of once per completion.
 */
export interface ScoringBatch {
  /** [B, T] token ids, right-padded with eos. */
  ids: Int32Array;
  /** [B, T] position ids: each completion continues its prompt's positions. */
  positionIds: Int32Array;
  /** [B, T] what each slot holds: 0 the prompt, j + 1 the row's j-th completion, -1 padding. */
  segments: Int32Array;
  /** B: rows. */
  batch: number;
  /** T: slots per row. */
  length: number;
  /** [N] flat index b*T + t of the position whose logits predict a scored token. */
  positions: Int32Array;
  /** [N] the scored token ids. */
  targets: Int32Array;
  /** [N] the sequence (index into the scored pairs) each scored token belongs to. */
  rows: Int32Array;
  /** Scored tokens per sequence (completion tokens + eos). */
  counts: number[];
}

/** Options for `buildScoringBatch`. */
export interface ScoringOptions {
  /** Appended after every completion that names no `eosId` of its own; pads the batch. */
  eosId: number;
  /** Context for an empty prompt (the first token needs a prefix); default `eosId`. */
  bosId?: number;
  /** Longest sequence the model accepts (n_positions). */
  maxLength: number;
  /**
   * Let completions of the same prompt share a row after one copy of it, where that costs less (see
   * `ROW_ATTENTION`). Default true.
   */
  sharePrompts?: boolean;
}

/**
 * The cost model that decides how many completions share a row: a row of T slots costs about T·(T + this),
 * its matmuls growing with T and its attention with T². GPT-2 small's attention products are T/4,608 of its
 * matmuls' work; the softmax and the unfused products cost more per FLOP, so the weight sits lower.
 */
const ROW_ATTENTION = 2048;

/**
 * Lays out sequences for scoring, in the order given (`rows` and `counts` index `pairs`). Right padding:
 * causal attention never lets a real token see it.
 */
export function buildScoringBatch(pairs: TokenPair[], options: ScoringOptions): ScoringBatch {
  const sequences = pairs.map((p, i) => {
    const prompt = p.promptIds.length > 0 ? p.promptIds : [options.bosId ?? options.eosId];
    const tail = [...p.completionIds, p.eosId ?? options.eosId];
    if (prompt.length + tail.length > options.maxLength) {
      throw new Error(
        `Cannot score sequence ${i}: it has ${
          prompt.length + tail.length
        } tokens (prompt ${prompt.length}, completion ${p.completionIds.length}, eos 1) but the model's context is ${options.maxLength}`,
      );
    }
    return { prompt, tail };
  });
  const byPrompt = new Map<string, number[]>();
  sequences.forEach(({ prompt }, i) => {
    const key = prompt.join(",");
    if (!byPrompt.has(key)) byPrompt.set(key, []);
    byPrompt.get(key)!.push(i);
  });
  const groups = [...byPrompt.values()];
  const rowsOf = (share: number) =>
    groups.flatMap((members) => {
      const parts = Math.ceil(members.length / share);
      const size = Math.ceil(members.length / parts);
      return Array.from({ length: parts }, (_, j) => members.slice(j * size, (j + 1) * size));
    });
  const lengthOf = (row: number[]) =>
    sequences[row[0]!]!.prompt.length + row.reduce((n, i) => n + sequences[i]!.tail.length, 0);
  const cost = (rows: number[][]) => {
    const T = Math.max(...rows.map(lengthOf));
    return rows.length * T * (T + ROW_ATTENTION);
  };
  let layout = rowsOf(1);
  const most = Math.max(...groups.map((g) => g.length));
  for (let share = 2; options.sharePrompts !== false && share <= most; share++) {
    const candidate = rowsOf(share);
    if (cost(candidate) < cost(layout)) layout = candidate;
  }

  const B = layout.length;
  const T = Math.max(1, ...layout.map(lengthOf));
  const ids = new Int32Array(B * T).fill(options.eosId);
  const positionIds = new Int32Array(B * T);
  const segments = new Int32Array(B * T).fill(-1);
  /** Per sequence: the flat index of its prompt's last token and of its tail's first. */
  const placed: { promptEnd: number; tailStart: number }[] = [];
  layout.forEach((members, b) => {
    const { prompt } = sequences[members[0]!]!;
    const row = b * T;
    prompt.forEach((id, t) => {
      ids[row + t] = id;
      positionIds[row + t] = t;
      segments[row + t] = 0;
    });
    let at = prompt.length;
    members.forEach((i, j) => {
      const { tail } = sequences[i]!;
      placed[i] = { promptEnd: row + prompt.length - 1, tailStart: row + at };
      tail.forEach((id, t) => {
        ids[row + at + t] = id;
        positionIds[row + at + t] = prompt.length + t;
        segments[row + at + t] = j + 1;
      });
      at += tail.length;
    });
  });
  const positions: number[] = [];
  const targets: number[] = [];
  const rowOf: number[] = [];
  const counts = sequences.map(({ tail }, i) => {
    const { promptEnd, tailStart } = placed[i]!;
    tail.forEach((id, t) => {
      positions.push(t === 0 ? promptEnd : tailStart + t - 1);
      targets.push(id);
      rowOf.push(i);
    });
    return tail.length;
  });
  return {
    ids,
    positionIds,
    segments,
    batch: B,
    length: T,
    positions: Int32Array.from(positions),
    targets: Int32Array.from(targets),
    rows: Int32Array.from(rowOf),
    counts,
  };
}

/**
 * The forward pass's tensors for a scoring batch: a query sees the keys at or before it in its own
 * completion and in the prompt; padding sees the prompt. The caller disposes them (or builds them in a tidy).
 */
export function scoringTensors(batch: ScoringBatch): Omit<ForwardInput, "cache"> {
  const { batch: B, length: T, segments } = batch;
  const bias = new Float32Array(B * T * T);
  for (let b = 0; b < B; b++) {
    for (let q = 0; q < T; q++) {
      const row = (b * T + q) * T;
      const own = Math.max(segments[b * T + q]!, 0);
      for (let k = 0; k < T; k++) {
        const seg = segments[b * T + k]!;
        if (k > q || (seg !== 0 && seg !== own)) bias[row + k] = MASKED;
      }
    }
  }
  return {
    ids: tf.tensor2d(batch.ids, [B, T], "int32"),
    positions: tf.tensor2d(batch.positionIds, [B, T], "int32"),
    bias: tf.tensor4d(bias, [B, 1, T, T]),
  };
}

/**
 * Per-row sums over the scored tokens: log-probs [B], and with `withLogitSums` the raw logits summed over
 * the vocabulary (TRL's `logits/*` metrics divide them by tokens × vocab). The LM head runs only on the
 * positions that predict scored tokens, not on the prompt. Synchronous; call in `tf.tidy` or a gradient
 * closure.
 */
export function scoreRows(model: CausalLM, batch: ScoringBatch): { logps: tf.Tensor1D };
export function scoreRows(
  model: CausalLM,
  batch: ScoringBatch,
  withLogitSums: true,
): { logps: tf.Tensor1D; logitSums: tf.Tensor1D };
export function scoreRows(
  model: CausalLM,
  batch: ScoringBatch,
  withLogitSums = false,
): { logps: tf.Tensor1D; logitSums?: tf.Tensor1D } {
  const logits = scoredLogits(model, batch); // [N, V]
  const rows = tf.tensor1d(batch.rows, "int32");
  const R = batch.counts.length;
  if (!withLogitSums) return { logps: tf.unsortedSegmentSum(targetLogProbs(logits, batch.targets), rows, R) };
  const { logp, sums } = targetLogProbsAndSums(logits, batch.targets);
  return { logps: tf.unsortedSegmentSum(logp, rows, R), logitSums: tf.unsortedSegmentSum(sums, rows, R) };
}

/** Per-token log-probs [N] of the scored tokens. Synchronous; call in `tf.tidy`. */
export function tokenLogProbs(model: CausalLM, batch: ScoringBatch): tf.Tensor1D {
  return targetLogProbs(scoredLogits(model, batch), batch.targets);
}

/** Sum of the scored log-probs per row: [B]. Synchronous; call in `tf.tidy`. */
export function sequenceLogProbs(model: CausalLM, batch: ScoringBatch): tf.Tensor1D {
  const perToken = tokenLogProbs(model, batch);
  return tf.unsortedSegmentSum(perToken, tf.tensor1d(batch.rows, "int32"), batch.counts.length);
}

/** Logits [N, V] at the positions that predict the scored tokens. */
function scoredLogits(model: CausalLM, batch: ScoringBatch): tf.Tensor2D {
  const { hidden } = model.forward(scoringTensors(batch)); // [B, T, C]
  const [B, T, C] = hidden.shape;
  const picked = tf.gather(tf.reshape(hidden, [B * T, C]), tf.tensor1d(batch.positions, "int32")); // [N, C]
  return model.logits(picked as tf.Tensor2D); // [N, V]
}

/**
 * log softmax(logits)[n, targets[n]] for every row: [N, V] -> [N], with a hand-written gradient
 * dy * (onehot(target) - softmax). Composing it from TF.js ops would differentiate through the
 * max in logSumExp (an `Equal` over [N, V] that costs more than the LM head on wasm) and keep
 * several [N, V] intermediates alive for the backward pass. On wasm each half is one kernel
 * (`_train_kernels.ts`): the forward keeps the logits and the log-sum-exp, and the backward
 * recomputes the softmax from them; elsewhere the forward keeps the softmax.
 */
export function targetLogProbs(logits: tf.Tensor2D, targets: Int32Array): tf.Tensor1D {
  return targetLogSoftmax(logits, targets, false);
}

/**
 * `targetLogProbs`, and each row's plain sum of logits [N] (a metric: no gradient flows through it). On wasm
 * the sums come from the same pass over [N, V] that finds each row's max.
 */
export function targetLogProbsAndSums(
  logits: tf.Tensor2D,
  targets: Int32Array,
): { logp: tf.Tensor1D; sums: tf.Tensor1D } {
  const [logp, sums] = tf.unstack(targetLogSoftmax(logits, targets, true)) as [tf.Tensor1D, tf.Tensor1D];
  return { logp, sums };
}

/** `targetLogProbs` [N], or with `withSums` it stacked on the rows' sums [2, N]. */
function targetLogSoftmax(logits: tf.Tensor2D, targets: Int32Array, withSums: false): tf.Tensor1D;
function targetLogSoftmax(logits: tf.Tensor2D, targets: Int32Array, withSums: true): tf.Tensor2D;
function targetLogSoftmax(logits: tf.Tensor2D, targets: Int32Array, withSums: boolean): tf.Tensor {
  const [N, V] = logits.shape;
  const flatIndex = targets.map((tok, n) => n * V + tok);
  // Index tensors are made inside each half: the backward pass runs after the forward's scope ended.
  const flat = () => tf.tensor1d(flatIndex, "int32");
  const targetIds = () => tf.tensor1d(targets, "int32");
  const output = (logp: tf.Tensor1D, sums: () => tf.Tensor1D) => (withSums ? tf.stack([logp, sums()]) : logp);
  const composed = (x: tf.Tensor2D) => {
    const max = tf.max(x, -1, true); // [N, 1]
    const e = tf.exp(tf.sub(x, max)); // [N, V]
    const total = tf.sum(e, -1, true); // [N, 1]
    const lse = tf.reshape(tf.add(tf.log(total), max), [N]); // [N]
    const picked = tf.gather(tf.reshape(x, [N * V]), flat()); // [N]
    return { value: output(tf.sub(picked, lse) as tf.Tensor1D, () => tf.sum(x, -1)), e, total };
  };
  const fused = (x: tf.Tensor2D) => {
    const { logp, lse, sums } = fusedTargetLogSoftmax(x, targetIds());
    return { value: output(logp, () => sums), lse };
  };
  // Nothing records gradients (scoring, the reference): no softmax to keep.
  if (tf.engine().state.gradientDepth === 0) {
    return trainKernelsApply() ? fused(logits).value : composed(logits).value;
  }
  const op = customOp(([x]) => {
    if (trainKernelsApply()) {
      const { value, lse } = fused(x as tf.Tensor2D);
      return { value, saved: [x!, lse] };
    }
    const { value, e, total } = composed(x as tf.Tensor2D);
    // The softmax is kept for the backward pass instead of the logits.
    return { value, saved: [tf.div(e, total)] };
  }, (dyOut, saved) => {
    const dy = (withSums ? tf.reshape(tf.slice(dyOut, [0, 0], [1, N]), [N]) : dyOut) as tf.Tensor1D; // [N]
    if (saved.length === 2) {
      const [x, lse] = saved as [tf.Tensor2D, tf.Tensor1D];
      return [fusedTargetLogSoftmaxBackward(dy, x, lse, targetIds())];
    }
    // dy * (onehot - softmax), written as -dy * softmax with the target entries replaced by
    // dy * (1 - p_target): two [N, V] tensors at the peak instead of four.
    const probs = saved[0]!;
    const scaled = tf.mul(probs, tf.neg(tf.reshape(dy, [N, 1]))); // [N, V]
    const pTarget = tf.gather(tf.reshape(probs, [N * V]), flat()); // [N]
    const indices = tf.tensor2d(Array.from(targets, (tok, n) => [n, tok]), [N, 2], "int32");
    return [tf.tensorScatterUpdate(scaled, indices, tf.mul(dy, tf.sub(1, pTarget)))];
  });
  return op(logits);
}

/** Scores pairs in batches; returns the sum (or mean with `average`) and the count per pair, in order. */
export async function scorePairs(
  model: CausalLM,
  pairs: TokenPair[],
  options: ScoringOptions & { batchSize?: number; average?: boolean },
): Promise<{ logp: number; nTokens: number }[]> {
  const size = options.batchSize ?? 8;
  const out: { logp: number; nTokens: number }[] = [];
  for (let i = 0; i < pairs.length; i += size) {
    const batch = buildScoringBatch(pairs.slice(i, i + size), options);
    const sums = tf.tidy(() => sequenceLogProbs(model, batch));
    const values = await sums.data();
    sums.dispose();
    batch.counts.forEach((n, b) => out.push({ logp: options.average ? values[b]! / n : values[b]!, nTokens: n }));
  }
  return out;
}

/** One generated token's log-prob under the model, and the most likely tokens at its position. */
export interface TokenLogprob {
  id: number;
  logprob: number;
  /** The `topK` most likely tokens at this position, most likely first. */
  top: { id: number; logprob: number }[];
}

/**
 * The log-probs (log softmax of the model's own logits: no temperature or top-p) of `completionIds` after
 * `promptIds`, with the `topK` most likely tokens at each position: what OpenAI's `logprobs` report.
 */
export async function completionLogprobs(
  model: CausalLM,
  promptIds: number[],
  completionIds: number[],
  topK: number,
): Promise<TokenLogprob[]> {
  if (completionIds.length === 0) return [];
  if (promptIds.length === 0) throw new Error("Cannot compute completion log-probs without a prompt token");
  const ids = [...promptIds, ...completionIds];
  const start = promptIds.length;
  const positions = Int32Array.from(completionIds, (_, i) => start - 1 + i);
  const [logprobs, topValues, topIndices] = tf.tidy(() => {
    const { hidden } = model.forward(forwardTensors(padBatch([ids], ids[0]!, "right")));
    const [, T, C] = hidden.shape;
    const picked = tf.gather(tf.reshape(hidden, [T, C]), tf.tensor1d(positions, "int32")) as tf.Tensor2D;
    const logSoftmax = tf.logSoftmax(model.logits(picked)); // [N, V]
    const chosen = tf.gather(
      tf.reshape(logSoftmax, [-1]),
      tf.tensor1d(
        completionIds.map((id, n) => n * logSoftmax.shape[1] + id),
        "int32",
      ),
    );
    const { values, indices } = tf.topk(logSoftmax, Math.max(1, topK));
    return [chosen, values, indices];
  });
  try {
    const [chosen, values, indices] = await Promise.all([logprobs.data(), topValues.data(), topIndices.data()]);
    const k = Math.max(1, topK);
    return completionIds.map((id, n) => ({
      id,
      logprob: chosen[n]!,
      top: topK === 0
        ? []
        : Array.from({ length: k }, (_, j) => ({ id: indices[n * k + j]!, logprob: values[n * k + j]! })),
    }));
  } finally {
    tf.dispose([logprobs, topValues, topIndices]);
  }
}
