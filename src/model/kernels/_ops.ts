/**
 * Ops with hand-written gradients. TF.js keeps every intermediate of a composed op, and the
 * gradient of every intermediate, alive until the whole backward pass ends; an op with its own
 * gradient keeps only what it saves. The forward and backward halves are exported separately so
 * that a transformer block can be one op built from them (see gpt2.ts).
 */
import type { Activation } from "../arch/config.ts";
import * as tf from "../tf.ts";
import {
  fusedAttentionSoftmax,
  fusedAttentionSoftmaxBackward,
  fusedLayerNorm,
  fusedLayerNormBackward,
  fusedMergeHeads,
  fusedSigmoidGate,
  fusedSigmoidGateBackward,
  fusedSplitHeads,
  trainKernelsApply,
} from "./_train_kernels.ts";

/**
 * A typed `tf.customGrad` whose forward and backward each run in their own tidy, so that only the
 * value, the saved tensors and the input gradients outlive them. (TF.js runs a custom gradient
 * outside any tidy: its temporaries would otherwise live until the whole backward pass ends.)
 */
export function customOp(
  forward: (inputs: tf.Tensor[]) => { value: tf.Tensor; saved: tf.Tensor[] },
  backward: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[],
): (...inputs: tf.Tensor[]) => tf.Tensor {
  const op = tf.customGrad(
    ((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const save = args.pop() as tf.GradSaveFunc;
      const [value, ...saved] = tf.tidy(() => {
        const out = forward(args as tf.Tensor[]);
        return [out.value, ...out.saved];
      });
      save(saved);
      // What the forward saved is freed as soon as this op's gradient is made, not when the whole backward pass
      // ends (TF.js's own disposal of them then does nothing): activations go while gradients come.
      const gradFunc = (dy: tf.Tensor, s: tf.Tensor[]) => {
        try {
          return tf.tidy(() => backward(dy, s));
        } finally {
          tf.dispose(s);
        }
      };
      return { value: value!, gradFunc };
    }) as Parameters<typeof tf.customGrad>[0],
  );
  return (...inputs) => op(...inputs);
}

/** Attention's rows qkv [B*T, 3C] as q, k and v [B, H, T, D]: one kernel on wasm (`_train_kernels.ts`). */
export function splitHeads(qkv: tf.Tensor2D, B: number, T: number, H: number): tf.Tensor4D[] {
  return trainKernelsApply() ? fusedSplitHeads(qkv, B, T, H, 3) : composedSplitHeads(qkv, B, T, H, 3);
}

/** Rows [B*T, C] as heads [B, H, T, D] (attention's output gradient before its products): one kernel on wasm. */
export function toHeads(rows: tf.Tensor2D, B: number, T: number, H: number): tf.Tensor4D {
  return (trainKernelsApply() ? fusedSplitHeads(rows, B, T, H, 1) : composedSplitHeads(rows, B, T, H, 1))[0]!;
}

/**
 * Rows [B*T, P·C] of P parts side by side as each part's heads [B, H, T, D], as TF.js ops: off wasm, under TF.js's
 * tape, and the reference for the wasm kernel.
 */
export function composedSplitHeads(rows: tf.Tensor2D, B: number, T: number, H: number, P: number): tf.Tensor4D[] {
  const D = rows.shape[1] / P / H;
  return tf.split(rows, P, 1).map((t) => tf.transpose(tf.reshape(t, [B, T, H, D]), [0, 2, 1, 3]) as tf.Tensor4D);
}

/** The inverse of `splitHeads` (the gradient of qkv from those of q, k and v): one kernel on wasm. */
export function mergeHeads(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D): tf.Tensor2D {
  return trainKernelsApply() ? fusedMergeHeads([q, k, v]) : composedMergeHeads([q, k, v]);
}

/** The inverse of `toHeads`: heads [B, H, T, D] as rows [B*T, C] (attention's output), one kernel on wasm. */
export function fromHeads(x: tf.Tensor4D): tf.Tensor2D {
  return trainKernelsApply() ? fusedMergeHeads([x]) : composedMergeHeads([x]);
}

/** Parts [B, H, T, D] as rows [B*T, P·C], as TF.js ops. */
export function composedMergeHeads(parts: tf.Tensor4D[]): tf.Tensor2D {
  const [B, H, T, D] = parts[0]!.shape;
  const rows = (t: tf.Tensor4D) => tf.reshape(tf.transpose(t, [0, 2, 1, 3]), [B * T, H * D]);
  return (parts.length === 1 ? rows(parts[0]!) : tf.concat(parts.map(rows), 1)) as tf.Tensor2D;
}

/**
 * Attention's probabilities softmax(scores · scale + bias) over the last axis, scores [B, H, R, S] and the
 * additive mask bias [B or 1, 1, R, S]: one kernel on wasm (`_train_kernels.ts`).
 */
export function attentionSoftmax(scores: tf.Tensor4D, bias: tf.Tensor4D, scale: number): tf.Tensor4D {
  return trainKernelsApply()
    ? fusedAttentionSoftmax(scores, bias, scale)
    : composedAttentionSoftmax(scores, bias, scale);
}

/** `attentionSoftmax` as TF.js ops. */
export function composedAttentionSoftmax(scores: tf.Tensor4D, bias: tf.Tensor4D, scale: number): tf.Tensor4D {
  return tf.softmax(tf.add(tf.mul(scores, scale), bias)) as tf.Tensor4D;
}

/** The gradient of the scores of `attentionSoftmax`: P (dP − Σ dP P) scale, one kernel on wasm. */
export function attentionSoftmaxBackward(probs: tf.Tensor4D, dProbs: tf.Tensor4D, scale: number): tf.Tensor4D {
  return trainKernelsApply()
    ? fusedAttentionSoftmaxBackward(probs, dProbs, scale)
    : composedAttentionSoftmaxBackward(probs, dProbs, scale);
}

/** `attentionSoftmaxBackward` as TF.js ops. */
export function composedAttentionSoftmaxBackward(probs: tf.Tensor4D, dProbs: tf.Tensor4D, scale: number): tf.Tensor4D {
  return tf.mul(tf.mul(probs, tf.sub(dProbs, tf.sum(tf.mul(dProbs, probs), -1, true))), scale) as tf.Tensor4D;
}

/** LayerNorm over the last axis, with what its backward pass needs: one kernel on wasm (`_train_kernels.ts`). */
export function layerNormForward<T extends tf.Tensor>(x: T, weight: tf.Tensor, bias: tf.Tensor, eps: number) {
  return trainKernelsApply() ? fusedLayerNorm(x, weight, bias, eps) : composedLayerNormForward(x, weight, bias, eps);
}

/** `layerNormForward` as TF.js ops: off wasm, under TF.js's tape, and the reference for the wasm kernel. */
export function composedLayerNormForward<T extends tf.Tensor>(x: T, weight: tf.Tensor, bias: tf.Tensor, eps: number) {
  const mean = tf.mean(x, -1, true); // [..., 1]
  const centered = tf.sub(x, mean);
  const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(centered), -1, true), eps)); // [..., 1]
  const xhat = tf.mul(centered, rstd) as T; // [..., C]
  return { y: tf.add(tf.mul(xhat, weight), bias) as T, xhat, rstd };
}

/** Gradients of LayerNorm given its output gradient and what the forward saved: one kernel on wasm. */
export function layerNormBackward(dy: tf.Tensor, xhat: tf.Tensor, rstd: tf.Tensor, weight: tf.Tensor) {
  return trainKernelsApply()
    ? fusedLayerNormBackward(dy, xhat, rstd, weight)
    : composedLayerNormBackward(dy, xhat, rstd, weight);
}

/** `layerNormBackward` as TF.js ops: off wasm, under TF.js's tape, and the reference for the wasm kernel. */
export function composedLayerNormBackward(dy: tf.Tensor, xhat: tf.Tensor, rstd: tf.Tensor, weight: tf.Tensor) {
  const rows: [number, number] = [-1, xhat.shape[xhat.rank - 1]!];
  const dxhat = tf.mul(dy, weight); // [..., C]
  // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
  const projection = tf.mul(xhat, tf.mean(tf.mul(dxhat, xhat), -1, true));
  const dx = tf.mul(rstd, tf.sub(tf.sub(dxhat, tf.mean(dxhat, -1, true)), projection));
  return {
    dx,
    dWeight: sumRows(tf.reshape(tf.mul(dy, xhat), rows) as tf.Tensor2D),
    dBias: sumRows(tf.reshape(dy, rows) as tf.Tensor2D),
  };
}

/**
 * Column sums of a matrix, [N, C] -> [C], as the product ones[1, N] x [N, C]: a matmul runs on the
 * backend's fastest kernel (OpenBLAS on wasm), where wasm's own reduction over axis 0 transposes the
 * matrix first and ran 17x slower (a gradient step does one per bias and per LayerNorm weight).
 */
export function sumRows(x: tf.Tensor2D): tf.Tensor1D {
  return tf.reshape(tf.matMul(tf.ones([1, x.shape[0]]), x), [x.shape[1]]) as tf.Tensor1D;
}

/** LayerNorm as one op: (x - mean) / sqrt(var + eps) * weight + bias. */
export function layerNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor, bias: tf.Tensor, eps: number): T {
  const op = customOp(([xi, w, b]) => {
    const { y, xhat, rstd } = layerNormForward(xi!, w!, b!, eps);
    return { value: y, saved: [xhat, rstd, w!] };
  }, (dy, [xhat, rstd, w]) => {
    const g = layerNormBackward(dy, xhat!, rstd!, w!);
    return [g.dx, g.dWeight, g.dBias];
  });
  return op(x, weight, bias) as T;
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/** The tanh GELUs as x sigmoid(a x (1 + b x^2)): 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). */
const GELU_TANH = { a: 2 * SQRT_2_OVER_PI, b: 0.044715 };

function isGeluTanh(name: Activation): boolean {
  return name === "gelu_new" || name === "gelu_pytorch_tanh" || name === "gelu_fast";
}

/** An activation's output and what its backward pass needs (the input, and one more tensor). */
export function activationForward(name: Activation, x: tf.Tensor): { y: tf.Tensor; aux: tf.Tensor } {
  if (isGeluTanh(name) && trainKernelsApply()) return fusedSigmoidGate(x, GELU_TANH.a, GELU_TANH.b);
  return composedActivationForward(name, x);
}

/** `activationForward` as TF.js ops: all but the tanh GELUs on wasm off the tape (the reference for that kernel). */
export function composedActivationForward(name: Activation, x: tf.Tensor): { y: tf.Tensor; aux: tf.Tensor } {
  switch (name) {
    case "gelu_new":
    case "gelu_pytorch_tanh":
    case "gelu_fast": {
      // 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), written as x sigmoid(2u): the same
      // function, and wasm's sigmoid is a vectorized kernel where its tanh is scalar (4x slower).
      const s = tf.sigmoid(tf.mul(tf.mul(x, tf.add(tf.mul(tf.square(x), 0.044715), 1)), 2 * SQRT_2_OVER_PI));
      return { y: tf.mul(x, s), aux: s };
    }
    case "gelu": { // 0.5 x (1 + erf(x / sqrt 2))
      const cdf = tf.mul(tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1), 0.5);
      return { y: tf.mul(x, cdf), aux: cdf };
    }
    case "relu":
      return { y: tf.relu(x), aux: tf.step(x) };
    case "silu":
    case "swish": {
      const s = tf.sigmoid(x);
      return { y: tf.mul(x, s), aux: s };
    }
    case "quick_gelu": {
      const s = tf.sigmoid(tf.mul(x, 1.702));
      return { y: tf.mul(x, s), aux: s };
    }
  }
}

/** dy * activation'(x), from the input and the `aux` tensor the forward returned. */
export function activationBackward(name: Activation, dy: tf.Tensor, x: tf.Tensor, aux: tf.Tensor): tf.Tensor {
  if (isGeluTanh(name) && trainKernelsApply()) return fusedSigmoidGateBackward(dy, x, aux, GELU_TANH.a, GELU_TANH.b);
  return composedActivationBackward(name, dy, x, aux);
}

/** `activationBackward` as TF.js ops: all but the tanh GELUs on wasm off the tape (the reference for that kernel). */
export function composedActivationBackward(name: Activation, dy: tf.Tensor, x: tf.Tensor, aux: tf.Tensor): tf.Tensor {
  switch (name) {
    case "gelu_new":
    case "gelu_pytorch_tanh":
    case "gelu_fast": {
      // With s = sigmoid(2u): s + x s (1 - s) 2u', u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
      const du2 = tf.mul(tf.add(tf.mul(tf.square(x), 3 * 0.044715), 1), 2 * SQRT_2_OVER_PI);
      return tf.mul(dy, tf.add(aux, tf.mul(tf.mul(tf.mul(x, aux), tf.sub(1, aux)), du2)));
    }
    case "gelu": { // cdf(x) + x pdf(x)
      const pdf = tf.mul(tf.exp(tf.mul(tf.square(x), -0.5)), INV_SQRT_2PI);
      return tf.mul(dy, tf.add(aux, tf.mul(x, pdf)));
    }
    case "relu":
      return tf.mul(dy, aux);
    case "silu":
    case "swish": // s (1 + x (1 - s))
      return tf.mul(dy, tf.mul(aux, tf.add(1, tf.mul(x, tf.sub(1, aux)))));
    case "quick_gelu": // s + 1.702 x s (1 - s)
      return tf.mul(dy, tf.add(aux, tf.mul(tf.mul(tf.mul(x, 1.702), aux), tf.sub(1, aux))));
  }
}

/**
 * Row lookup `table[ids]` whose gradient is built straight from the rows' gradients
 * (UnsortedSegmentSum). tf.gather's own gradient adds an identity transpose of the
 * whole [V, C] table, which on wasm costs more than the lookup's matmul-sized peers.
 */
export function embed(table: tf.Tensor2D | tf.Variable, ids: tf.Tensor1D): tf.Tensor2D {
  const rows = table.shape[0]!;
  const op = customOp(
    ([t]) => ({ value: tf.gather(t!, ids), saved: [ids] }),
    (dy, [saved]) => [tf.unsortedSegmentSum(dy, saved as tf.Tensor1D, rows)],
  );
  return op(table) as tf.Tensor2D;
}

/** A LoRA update of a linear layer as its backward pass needs it: A [r, in], B [out, r], low = x A^T [N, r]. */
export interface LoraSaved {
  a: tf.Tensor;
  b: tf.Tensor;
  low: tf.Tensor2D;
  scale: number;
}

/**
 * Gradients of y = x W + b (`inOut`: W is [in, out], GPT-2's Conv1D) or y = x W^T + b (W is [out, in]),
 * plus a LoRA update (x A^T B^T) * scale, for rows x [N, in] and dy [N, out]. dx always; the weight's and
 * the bias's gradients only when `want` asks (a frozen weight costs no matmul); the adapter's with `lora`.
 */
export function linearBackward(
  dy: tf.Tensor2D,
  x: tf.Tensor2D,
  weight: tf.Tensor,
  o: { inOut: boolean; want: { weight: boolean; bias: boolean }; lora?: LoraSaved },
) {
  const w = weight as tf.Tensor2D;
  let dx = (o.inOut ? tf.matMul(dy, w, false, true) : tf.matMul(dy, w)) as tf.Tensor2D; // [N, in]
  const dWeight = o.want.weight ? (o.inOut ? tf.matMul(x, dy, true, false) : tf.matMul(dy, x, true, false)) : undefined;
  const dBias = o.want.bias ? sumRows(dy) : undefined;
  if (!o.lora) return { dx, dWeight, dBias };
  const { a, b, low, scale } = o.lora;
  const dLow = tf.mul(tf.matMul(dy, b as tf.Tensor2D), scale) as tf.Tensor2D; // [N, r]
  dx = tf.add(dx, tf.matMul(dLow, a as tf.Tensor2D)) as tf.Tensor2D;
  const dA = tf.matMul(dLow, x, true, false); // [r, in]
  const dB = tf.mul(tf.matMul(dy, low, true, false), scale); // [out, r]
  return { dx, dWeight, dBias, dA, dB };
}
