/**
 * AdamW's update and the gradients' sum of squares (for clipping) as WebAssembly SIMD kernels that work in
 * place on TF.js's wasm heap (memory 0), the two moments in a memory of their own (memory 1: off the heap,
 * whose 4 GiB hold the model, its gradients and activations). Four lanes at a time in float32, as PyTorch's
 * AdamW computes; the last n mod 4 values of a tensor in JavaScript. The sum of squares is accumulated in
 * float64. On the wasm backend only; `WasmAdamW.create` and `heapSumOfSquares` answer undefined elsewhere.
 */
import * as tf from "../model/tf.ts";
import { compiledOnce, F32, F64, I32, loopTo, op, V128, wasmModule } from "../util/wasm.ts";
import { heapOffset, type WasmHeapBackend } from "../model/kernels/heap.ts";

interface WasmBackendInternals extends WasmHeapBackend {
  makeOutput(shape: number[], dtype: "float32"): tf.TensorInfo;
}

const { localGet: get, localSet: set, localTee: tee } = op;

/**
 * adamw(pIn, pOut, g, m, v, n, β1, β2, c1, c2, decay, stepSize, inv, eps), byte offsets, n a multiple of 4:
 *   m = β1·m + c1·g;  v = β2·v + c2·g²;  pOut = decay·pIn − stepSize·m / (√v·inv + eps)
 */
function adamwBody(): number[] {
  const [pIn, pOut, g, m, v, n] = [0, 1, 2, 3, 4, 5];
  const i = 14, G = 23, M = 24, Vv = 25;
  const splat = (k: number) => 15 + k; // β1, β2, c1, c2, decay, stepSize, inv, eps as f32x4
  const at = (base: number) => [...get(base), ...get(i), ...op.i32Add];
  return [
    ...Array.from({ length: 8 }, (_, k) => [...get(6 + k), ...op.f32x4Splat, ...set(splat(k))]).flat(),
    ...get(n),
    ...op.i32Const(2),
    ...op.i32Shl,
    ...set(n),
    ...loopTo(i, n, 16, [
      ...at(g),
      ...op.v128Load(0),
      ...set(G),
      // m
      ...at(m),
      ...at(m),
      ...op.v128Load(1),
      ...get(splat(0)),
      ...op.f32x4Mul,
      ...get(G),
      ...get(splat(2)),
      ...op.f32x4Mul,
      ...op.f32x4Add,
      ...tee(M),
      ...op.v128Store(1),
      // v
      ...at(v),
      ...at(v),
      ...op.v128Load(1),
      ...get(splat(1)),
      ...op.f32x4Mul,
      ...get(G),
      ...get(G),
      ...op.f32x4Mul,
      ...get(splat(3)),
      ...op.f32x4Mul,
      ...op.f32x4Add,
      ...tee(Vv),
      ...op.v128Store(1),
      // p
      ...at(pOut),
      ...at(pIn),
      ...op.v128Load(0),
      ...get(splat(4)),
      ...op.f32x4Mul,
      ...get(splat(5)),
      ...get(M),
      ...op.f32x4Mul,
      ...get(Vv),
      ...op.f32x4Sqrt,
      ...get(splat(6)),
      ...op.f32x4Mul,
      ...get(splat(7)),
      ...op.f32x4Add,
      ...op.f32x4Div,
      ...op.f32x4Sub,
      ...op.v128Store(0),
    ]),
  ];
}

/** sumSquares(x, n) → Σ x² in float64 over n (a multiple of 4) float32 values at byte offset x of memory 0. */
function sumSquaresBody(): number[] {
  const [x, n, i, X, lo, hi, t] = [0, 1, 2, 3, 4, 5, 6];
  const square = (acc: number) => [...tee(t), ...get(t), ...op.f64x2Mul, ...get(acc), ...op.f64x2Add, ...set(acc)];
  return [
    ...op.f64Const0,
    ...op.f64x2Splat,
    ...tee(lo),
    ...set(hi),
    ...get(n),
    ...op.i32Const(2),
    ...op.i32Shl,
    ...set(n),
    ...loopTo(i, n, 16, [
      ...get(x),
      ...get(i),
      ...op.i32Add,
      ...op.v128Load(0),
      ...tee(X),
      ...op.f64x2PromoteLowF32x4,
      ...square(lo),
      ...get(X),
      ...get(X),
      ...op.f32x4High,
      ...op.f64x2PromoteLowF32x4,
      ...square(hi),
    ]),
    ...get(lo),
    ...get(hi),
    ...op.f64x2Add,
    ...tee(lo),
    ...op.f64x2ExtractLane(0),
    ...get(lo),
    ...op.f64x2ExtractLane(1),
    ...op.f64Add,
  ];
}

/** The kernels' module, compiled once; null where this runtime lacks SIMD or multi-memory. */
const kernelModule = compiledOnce(() =>
  wasmModule(["heap", "moments"], [
    {
      name: "adamw",
      params: [I32, I32, I32, I32, I32, I32, F32, F32, F32, F32, F32, F32, F32, F32],
      results: [],
      locals: [I32, ...Array(11).fill(V128)],
      body: adamwBody(),
    },
    {
      name: "sumSquares",
      params: [I32, I32],
      results: [F64],
      locals: [I32, V128, V128, V128, V128],
      body: sumSquaresBody(),
    },
  ])
);

interface Kernels {
  adamw(...args: number[]): void;
  sumSquares(x: number, n: number): number;
}

/** TF.js's wasm backend, when it is the active one. */
function wasmBackend(): WasmBackendInternals | undefined {
  return tf.getBackend() === "wasm" ? tf.backend() as unknown as WasmBackendInternals : undefined;
}

function instantiate(backend: WasmBackendInternals, moments: WebAssembly.Memory): Kernels | undefined {
  const module = kernelModule();
  if (module === null) return undefined;
  const instance = new WebAssembly.Instance(module, { env: { heap: backend.wasm.asm.memory, moments } });
  return instance.exports as unknown as Kernels;
}

/** The settings of one AdamW update, as `Optimizer` computes them from its config, the step and the clipping. */
export interface AdamWStep {
  beta1: number;
  beta2: number;
  /** (1 − β1)·scale and (1 − β2)·scale², the clipping scale folded in. */
  c1: number;
  c2: number;
  /** 1 − lr·weight_decay. */
  decay: number;
  /** lr / (1 − β1^t). */
  stepSize: number;
  /** 1 / √(1 − β2^t). */
  inv: number;
  eps: number;
}

/** AdamW on the wasm heap, its moments by parameter name in a memory of their own. */
export class WasmAdamW {
  readonly #backend: WasmBackendInternals;
  #moments: WebAssembly.Memory;
  #kernels: Kernels;
  /** Byte offsets of each parameter's first moment; the second follows it. */
  #offsets = new Map<string, { offset: number; length: number }>();
  #top = 0;

  private constructor(backend: WasmBackendInternals, moments: WebAssembly.Memory, kernels: Kernels) {
    this.#backend = backend;
    this.#moments = moments;
    this.#kernels = kernels;
  }

  /** The update on this runtime and backend, or undefined (not the wasm backend, no SIMD). */
  static create(): WasmAdamW | undefined {
    const backend = wasmBackend();
    if (backend === undefined) return undefined;
    const moments = new WebAssembly.Memory({ initial: 1 });
    const kernels = instantiate(backend, moments);
    return kernels && new WasmAdamW(backend, moments, kernels);
  }

  /** The moments of `name` (zeros when new): [m, v], views valid until the next allocation. */
  #slot(name: string, length: number): { m: number; v: number } {
    let slot = this.#offsets.get(name);
    if (slot === undefined) {
      const bytes = Math.ceil(length / 4) * 16; // one array, rounded up to whole SIMD lanes
      const need = this.#top + 2 * bytes;
      if (need > this.#moments.buffer.byteLength) {
        const pages = Math.ceil((need - this.#moments.buffer.byteLength) / 65536);
        this.#moments.grow(Math.max(pages, this.#moments.buffer.byteLength / 65536 / 2 | 0));
      }
      slot = { offset: this.#top, length };
      this.#offsets.set(name, slot);
      this.#top = need;
    }
    if (slot.length !== length) {
      throw new Error(`Cannot update '${name}': its moments hold ${slot.length} values, the parameter ${length}`);
    }
    return { m: slot.offset, v: slot.offset + Math.ceil(length / 4) * 16 };
  }

  /**
   * One update of `p` by `g` with `s`, written to new storage that `p` then takes: never in place. TF.js's wasm
   * kernels keep state per tensor that goes stale when a tensor's values are rewritten where they lie: a GPT-2
   * trained in place without OpenBLAS went on computing with its Linear biases as they were before the update
   * (the trainer's test "computes with the weights it holds"). New storage is a new tensor to every kernel. The
   * old storage is freed by the assign, or kept by whoever shares it (`reference.assign(policy)`).
   */
  update(name: string, p: tf.Variable, g: tf.Tensor, s: AdamWStep): void {
    const { m, v } = this.#slot(name, p.size);
    const b = this.#backend;
    const next = tf.engine().makeTensorFromTensorInfo(b.makeOutput(p.shape, "float32"));
    const [pIn, pOut, gAt] = [heapOffset(b, p), heapOffset(b, next), heapOffset(b, g)];
    const n = p.size;
    const simd = n - (n % 4);
    this.#kernels.adamw(pIn, pOut, gAt, m, v, simd, s.beta1, s.beta2, s.c1, s.c2, s.decay, s.stepSize, s.inv, s.eps);
    if (simd < n) {
      const heap = new Float32Array(b.wasm.asm.memory.buffer);
      const moments = new Float32Array(this.#moments.buffer);
      for (let k = simd; k < n; k++) {
        const gi = heap[gAt / 4 + k]!;
        const mi = moments[m / 4 + k] = s.beta1 * moments[m / 4 + k]! + s.c1 * gi;
        const vi = moments[v / 4 + k] = s.beta2 * moments[v / 4 + k]! + s.c2 * gi * gi;
        heap[pOut / 4 + k] = s.decay * heap[pIn / 4 + k]! - s.stepSize * mi / (Math.sqrt(vi) * s.inv + s.eps);
      }
    }
    p.assign(next);
    next.dispose();
  }

  /** Copies of every parameter's moments, as `exp_avg/<name>` and `exp_avg_sq/<name>`. */
  moments(): Map<string, Float32Array> {
    const out = new Map<string, Float32Array>();
    for (const [name, { length }] of this.#offsets) {
      const { m, v } = this.#slot(name, length);
      out.set(`exp_avg/${name}`, new Float32Array(this.#moments.buffer, m, length).slice());
      out.set(`exp_avg_sq/${name}`, new Float32Array(this.#moments.buffer, v, length).slice());
    }
    return out;
  }

  /** Sets the moments of `name` (replacing any). */
  setMoments(name: string, m: Float32Array, v: Float32Array): void {
    const slot = this.#slot(name, m.length);
    new Float32Array(this.#moments.buffer, slot.m, m.length).set(m);
    new Float32Array(this.#moments.buffer, slot.v, v.length).set(v);
  }

  /** Frees every moment. */
  clear(): void {
    this.#offsets.clear();
    this.#top = 0;
    this.#moments = new WebAssembly.Memory({ initial: 1 });
    this.#kernels = instantiate(this.#backend, this.#moments)!;
  }
}

let sums: { backend: WasmBackendInternals; kernels: Kernels } | undefined;

/** Σ‖t‖² over `tensors` on the wasm heap in float64, or undefined off the wasm backend (or without SIMD). */
export function heapSumOfSquares(tensors: readonly tf.Tensor[]): number | undefined {
  const backend = wasmBackend();
  if (backend === undefined) return undefined;
  if (sums?.backend !== backend) {
    const kernels = instantiate(backend, new WebAssembly.Memory({ initial: 1 }));
    if (kernels === undefined) return undefined;
    sums = { backend, kernels };
  }
  let total = 0;
  for (const t of tensors) {
    const at = heapOffset(backend, t);
    const simd = t.size - (t.size % 4);
    total += sums.kernels.sumSquares(at, simd);
    if (simd < t.size) {
      const heap = new Float32Array(backend.wasm.asm.memory.buffer, at, t.size);
      for (let k = simd; k < t.size; k++) total += heap[k]! * heap[k]!;
    }
  }
  return total;
}
