/**
 * Kernels for one decoding step on the wasm backend. A step feeds one token per row, so its tensors are
 * small and TF.js's per-op dispatch costs more than their arithmetic: composed from TF.js ops a GPT-2 block
 * is about 65 ops, with these it is about 15 (LayerNorm and attention one kernel each, the keys and values
 * written in place). They run in JavaScript on the wasm heap, as `_kernels.ts` does (attention's per-head work in
 * `_train_kernels.ts`'s WebAssembly SIMD), and have no gradient:
 * generation only. The activation is not here: a JavaScript loop over the MLP's width lost to TF.js's vectorized
 * kernels (1.3 ms a step against 0.2 at gpt2-8x512); it runs as `_train_kernels.ts`'s SIMD kernel.
 */
import * as tf from "../tf.ts";
import { type Gemv, nativeGemv } from "./blas.ts";
import { heapAttendHead } from "./_train_kernels.ts";
import type { WasmHeapBackend } from "./heap.ts";

interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array;
  disposeData(dataId: tf.DataId): boolean;
}

interface KernelArgs {
  inputs: tf.NamedTensorInfoMap;
  attrs?: tf.NamedAttrMap;
  backend: unknown;
}

const EMBED = "DpoDecodeEmbed";
const LAYER_NORM = "DpoDecodeLayerNorm";
const ATTENTION = "DpoDecodeAttention";
const ATTENTION_IN_PLACE = "DpoDecodeAttentionInPlace";

/**
 * GPT-2's input of one token per row: tokens [V, C] at ids [B] plus positions [P, C] at positions [B], as
 * [1, B, C] (two gathers, an add and four reshapes as TF.js ops; its gather took 40 us a call here).
 */
function embedKernel({ inputs, backend }: KernelArgs): tf.TensorInfo {
  const wasm = backend as WasmBackendLike;
  const { tokens, positions, ids, at } = inputs as Record<string, tf.TensorInfo>;
  const [V, C] = tokens!.shape as [number, number];
  const P = positions!.shape[0]!;
  const B = ids!.shape.reduce((a, b) => a * b, 1);
  const out = wasm.makeOutput([1, B, C], "float32");
  const y = wasm.typedArrayFromHeap(out);
  const wte = wasm.typedArrayFromHeap(tokens!);
  const wpe = wasm.typedArrayFromHeap(positions!);
  const id = wasm.typedArrayFromHeap(ids!);
  const pos = wasm.typedArrayFromHeap(at!);
  for (let b = 0; b < B; b++) {
    const [i, p] = [id[b]!, pos[b]!];
    if (!(i >= 0 && i < V)) throw new Error(`Cannot embed token id ${i}: the vocabulary has ${V} tokens`);
    if (!(p >= 0 && p < P)) throw new Error(`Cannot embed position ${p}: the model has ${P} positions`);
    for (let c = 0; c < C; c++) y[b * C + c] = wte[i * C + c]! + wpe[p * C + c]!;
  }
  return out;
}

/** y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis of x [N, C]. */
function layerNormKernel({ inputs, attrs, backend }: KernelArgs): tf.TensorInfo {
  const wasm = backend as WasmBackendLike;
  const x = inputs.x!;
  const eps = attrs!.eps as number;
  const C = x.shape[x.shape.length - 1]!;
  const out = wasm.makeOutput(x.shape, "float32");
  // Views are taken after makeOutput: allocation may grow and detach the heap.
  const y = wasm.typedArrayFromHeap(out);
  const xs = wasm.typedArrayFromHeap(x);
  const w = wasm.typedArrayFromHeap(inputs.weight!);
  const b = wasm.typedArrayFromHeap(inputs.bias!);
  for (let row = 0; row < xs.length; row += C) {
    let mean = 0;
    for (let c = 0; c < C; c++) mean += xs[row + c]!;
    mean /= C;
    let variance = 0;
    for (let c = 0; c < C; c++) {
      const d = xs[row + c]! - mean;
      variance += d * d;
    }
    const rstd = 1 / Math.sqrt(variance / C + eps);
    for (let c = 0; c < C; c++) y[row + c] = (xs[row + c]! - mean) * rstd * w[c]! + b[c]!;
  }
  return out;
}

/** 2^n for n in [-128, 127], at index n + 128. */
const POW2 = Float64Array.from({ length: 256 }, (_, i) => 2 ** (i - 128));
const LN2_HI = 0.6931471803691238;
const LN2_LO = 1.9082149292705877e-10;

/**
 * e^z to a relative 1e-8 (below float32's resolution), 0 below -87 and e^87 above 87. V8's Math.exp took
 * 15-19 ns here, this 5-10: the softmax of a decoding step calls it for every key of every head.
 */
function fastExp(z: number): number {
  if (z < -87) return 0;
  if (z > 87) z = 87;
  const n = Math.round(z * Math.LOG2E);
  const r = z - n * LN2_HI - n * LN2_LO; // |r| <= ln(2) / 2: a degree-7 Taylor polynomial is within 1e-8
  const p = 1 + r * (1 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r / 5040))))));
  return p * POW2[n + 128]!;
}

/**
 * Attention of one new token per row. Inputs: qkv [1, B, 3C] (queries, keys, values side by side, as
 * GPT-2's c_attn makes them), the past keys and values [B, H, P, D] and the additive bias [B, 1, 1, S].
 * Outputs: the heads merged [1, B, C], and the keys and values with this token's appended [B, H, S, D]
 * (what `concat` would make, written once).
 */
function attentionKernel({ inputs, attrs, backend }: KernelArgs): tf.TensorInfo[] {
  const wasm = backend as WasmBackendLike;
  const { qkv, pastK, pastV, bias } = inputs as Record<string, tf.TensorInfo>;
  const [B, H, P, D] = pastK!.shape as [number, number, number, number];
  const S = P + 1;
  const merged = wasm.makeOutput([1, B, H * D], "float32");
  const kOut = wasm.makeOutput([B, H, S, D], "float32");
  const vOut = wasm.makeOutput([B, H, S, D], "float32");
  // Views are taken after makeOutput: allocation may grow and detach the heap.
  const ks = wasm.typedArrayFromHeap(kOut) as Float32Array;
  const vs = wasm.typedArrayFromHeap(vOut) as Float32Array;
  const pk = wasm.typedArrayFromHeap(pastK!);
  const pv = wasm.typedArrayFromHeap(pastV!);
  for (let head = 0; head < B * H; head++) {
    ks.set(pk.subarray(head * P * D, (head + 1) * P * D), head * S * D);
    vs.set(pv.subarray(head * P * D, (head + 1) * P * D), head * S * D);
  }
  attend(
    wasm,
    { qkv: qkv!, bias: bias!, merged, k: kOut, v: vOut },
    { heads: H, capacity: S, past: P },
    attrs!.scale as number,
  );
  return [merged, kOut, vOut];
}

/**
 * `attentionKernel` over a cache with room: keys and values [B, H, capacity, D] whose first P = S - 1
 * positions hold the past (S from the bias [B, 1, 1, S]). This token's key and value are written in place
 * at position P, so a step copies nothing; the only output is the merged heads [1, B, C].
 */
function attentionInPlaceKernel({ inputs, attrs, backend }: KernelArgs): tf.TensorInfo {
  const wasm = backend as WasmBackendLike;
  const { qkv, cacheK, cacheV, bias } = inputs as Record<string, tf.TensorInfo>;
  const [B, H, capacity, D] = cacheK!.shape as [number, number, number, number];
  const past = bias!.shape[3]! - 1;
  if (past >= capacity) {
    throw new Error(`Cannot decode in place as the cache holds ${capacity} keys: current length is ${past}`);
  }
  const merged = wasm.makeOutput([1, B, H * D], "float32");
  attend(
    wasm,
    { qkv: qkv!, bias: bias!, merged, k: cacheK!, v: cacheV! },
    { heads: H, capacity, past },
    attrs!.scale as number,
  );
  return merged;
}

/** The shape of `attend`'s keys and values [B, H, capacity, D]: the first `past` positions filled. */
interface HeadCache {
  heads: number;
  capacity: number;
  past: number;
}

/**
 * Writes each row's new key and value at position `past` of the cache (t.k and t.v) and its attention over
 * positions 0..past into `merged` [1, B, H * D]. Each head runs as one WebAssembly SIMD call (`heapAttendHead`:
 * at gpt2-8x512 a head's two products are 2 x 80 x 64 multiply-adds, less than an sgemv call's own cost), or
 * where those kernels are missing as two matrix-vector products: OpenBLAS's sgemv when native matmul is on,
 * else loops.
 */
function attend(
  wasm: WasmBackendLike,
  t: { qkv: tf.TensorInfo; bias: tf.TensorInfo; merged: tf.TensorInfo; k: tf.TensorInfo; v: tf.TensorInfo },
  cache: HeadCache,
  scale: number,
): void {
  const { heads: H, capacity, past: P } = cache;
  const [, B, C] = t.merged.shape as [number, number, number];
  const D = C / H;
  const S = P + 1;
  const attendHead = heapAttendHead(wasm as unknown as WasmHeapBackend);
  // The softmax's scratch on the heap, made before the views: allocation may grow and detach the heap.
  const scratch = attendHead ? wasm.makeOutput([S], "float32") : undefined;
  try {
    const ks = wasm.typedArrayFromHeap(t.k) as Float32Array;
    const vs = wasm.typedArrayFromHeap(t.v) as Float32Array;
    const m = wasm.typedArrayFromHeap(t.merged) as Float32Array;
    const x = wasm.typedArrayFromHeap(t.qkv) as Float32Array;
    const mask = wasm.typedArrayFromHeap(t.bias) as Float32Array;
    const probs = scratch ? wasm.typedArrayFromHeap(scratch) as Float32Array : new Float32Array(S);
    const gemv = nativeGemv() ?? jsGemv;
    const at = (view: Float32Array, index: number) => view.byteOffset + 4 * index;
    for (let b = 0; b < B; b++) {
      const row = b * 3 * C;
      for (let h = 0; h < H; h++) {
        const head = (b * H + h) * capacity * D;
        if (attendHead) {
          const [q, k, v] = [at(x, row + h * D), at(x, row + C + h * D), at(x, row + 2 * C + h * D)];
          attendHead(
            q,
            k,
            v,
            at(ks, head),
            at(vs, head),
            at(mask, b * S),
            at(m, b * C + h * D),
            probs.byteOffset,
            S,
            D,
            scale,
          );
          continue;
        }
        ks.set(x.subarray(row + C + h * D, row + C + (h + 1) * D), head + P * D);
        vs.set(x.subarray(row + 2 * C + h * D, row + 2 * C + (h + 1) * D), head + P * D);
        const keys = ks.subarray(head, head + S * D); // [S, D]
        gemv(false, S, D, scale, keys, x.subarray(row + h * D, row + (h + 1) * D), 0, probs); // scores [S]
        let max = -Infinity;
        for (let s = 0; s < S; s++) {
          const score = probs[s]! + mask[b * S + s]!;
          probs[s] = score;
          if (score > max) max = score;
        }
        let total = 0;
        for (let s = 0; s < S; s++) {
          const e = fastExp(probs[s]! - max);
          probs[s] = e;
          total += e;
        }
        const values = vs.subarray(head, head + S * D); // [S, D]
        gemv(true, S, D, 1 / total, values, probs, 0, m.subarray(b * C + h * D, b * C + (h + 1) * D)); // [D]
      }
    }
  } finally {
    if (scratch) wasm.disposeData(scratch.dataId);
  }
}

/** `Gemv` in JavaScript, for beta 0 (all the attention needs) when OpenBLAS is not loaded. */
const jsGemv: Gemv = (transpose, m, n, alpha, a, x, _beta, y) => {
  if (!transpose) {
    for (let i = 0; i < m; i++) {
      let dot = 0;
      for (let j = 0; j < n; j++) dot += a[i * n + j]! * x[j]!;
      y[i] = alpha * dot;
    }
    return;
  }
  y.fill(0, 0, n);
  for (let i = 0; i < m; i++) {
    const w = alpha * x[i]!;
    for (let j = 0; j < n; j++) y[j]! += w * a[i * n + j]!;
  }
};

let registered = false;

/** Registers the decoding kernels on the wasm backend once. */
export function registerDecodeKernels(): void {
  if (registered) return;
  registered = true;
  const kernels: [string, (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[]][] = [
    [EMBED, embedKernel],
    [LAYER_NORM, layerNormKernel],
    [ATTENTION, attentionKernel],
    [ATTENTION_IN_PLACE, attentionInPlaceKernel],
  ];
  for (const [kernelName, kernelFunc] of kernels) {
    if (!tf.getKernel(kernelName, "wasm")) {
      tf.registerKernel({ kernelName, backendName: "wasm", kernelFunc: kernelFunc as tf.KernelFunc });
    }
  }
}

/** Whether a decoding step can run on these kernels: the wasm backend is active and they are registered. */
export function decodeKernelsApply(): boolean {
  return tf.getBackend() === "wasm" && tf.getKernel(ATTENTION, "wasm") !== undefined;
}

/** tokens[ids] + positions[at] for one token per row (ids, at: [B, 1] int32) as rows [1, B, C]. */
export function decodeEmbed(tokens: tf.Tensor, positions: tf.Tensor, ids: tf.Tensor, at: tf.Tensor): tf.Tensor3D {
  return tf.engine().runKernel(EMBED, { tokens, positions, ids, at }) as tf.Tensor3D;
}

/** LayerNorm of rows [1, N, C] as one kernel. */
export function decodeLayerNorm(x: tf.Tensor3D, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor3D {
  return tf.engine().runKernel(LAYER_NORM, { x, weight, bias }, { eps }) as tf.Tensor3D;
}

/**
 * One new token's attention for every row: qkv [1, B, 3C], past keys and values [B, H, P, D], bias
 * [B, 1, 1, P + 1]. Returns the merged heads [1, B, C] and the extended keys and values [B, H, P + 1, D].
 */
export function decodeAttention(
  qkv: tf.Tensor3D,
  past: { k: tf.Tensor4D; v: tf.Tensor4D },
  bias: tf.Tensor4D,
  scale: number,
): { merged: tf.Tensor3D; k: tf.Tensor4D; v: tf.Tensor4D } {
  const inputs = { qkv, pastK: past.k, pastV: past.v, bias };
  const [merged, k, v] = tf.engine().runKernel(ATTENTION, inputs, { scale }) as tf.Tensor[];
  return { merged: merged as tf.Tensor3D, k: k as tf.Tensor4D, v: v as tf.Tensor4D };
}

/**
 * `decodeAttention` over a cache with room ([B, H, capacity, D], its first P positions filled, P + 1 from
 * the bias [B, 1, 1, P + 1]): writes this token's keys and values into it at position P, in place (the
 * cache's owner must be its only reader), and returns the merged heads [1, B, C].
 */
export function decodeAttentionInPlace(
  qkv: tf.Tensor3D,
  cache: { k: tf.Tensor4D; v: tf.Tensor4D },
  bias: tf.Tensor4D,
  scale: number,
): tf.Tensor3D {
  const inputs = { qkv, cacheK: cache.k, cacheV: cache.v, bias };
  return tf.engine().runKernel(ATTENTION_IN_PLACE, inputs, { scale }) as tf.Tensor3D;
}

/**
 * y = x W + b for rows x [1, N, in] and W [in, out] as one `_FusedMatMul` (`tf.fused.matMul` adds three
 * reshapes around it).
 */
export function decodeLinear(x: tf.Tensor3D, w: tf.Tensor, b: tf.Tensor): tf.Tensor3D {
  const [inSize, outSize] = w.shape as [number, number];
  const attrs = { transposeA: false, transposeB: false, activation: "linear", leakyreluAlpha: 0 };
  const inputs = { a: x, b: tf.reshape(w, [1, inSize, outSize]), bias: b };
  return tf.engine().runKernel(tf._FusedMatMul, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor3D;
}
