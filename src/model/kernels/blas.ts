/**
 * Native matmul for the TF.js `wasm` backend: `BatchMatMul` and `_FusedMatMul` are routed to
 * OpenBLAS `cblas_sgemm` through Deno's FFI, reading and writing the wasm heap in place.
 *
 * Why it is zero-copy: a TF.js wasm tensor is a `malloc`ed block on the module's linear memory, and
 * Deno's FFI `"buffer"` parameters accept typed-array views over a `WebAssembly.Memory` buffer, passing
 * the address of the view's first byte. OpenBLAS therefore reads A and B and writes C where TF.js
 * keeps them. The views are made after the output is allocated, since `malloc` may grow the memory,
 * which detaches every older view of it.
 */
import * as tf from "../tf.ts";
import type { KernelConfig, KernelFunc, NamedTensorInfoMap, TensorInfo } from "@tensorflow/tfjs-core";
import { type SgemmHelper, startSgemmHelper } from "./_sgemm_helper.ts";

/** Options of `enableNativeMatmul`. */
export interface NativeMatmulOptions {
  /**
   * Path or soname of a library exporting `cblas_sgemm`, tried before `OPENBLAS_LIB` and the Debian
   * defaults. The first library that opens stays loaded for the life of the process.
   */
  libraryPath?: string;
  /** OpenBLAS threads; default `navigator.hardwareConcurrency`. */
  threads?: number;
  /**
   * Products with fewer multiply-adds than this (M·N·K summed over the batch) stay on the wasm
   * kernel. Default 0: measured here, OpenBLAS won at every size down to 8³, since an FFI call costs
   * about 0.3 µs and the wasm kernel's own per-call overhead is larger (scripts/bench_matmul.ts).
   */
  minWork?: number;
  /** Products with at most this many rows run as one sgemv a row; default GEMV_ROWS (2), 0 never. */
  gemvRows?: number;
  /**
   * sgemm products with 8 to this many rows over a weight matrix of at most FEW_ROWS_WEIGHTS floats, and not
   * split (`splitRows`), run on one thread; default FEW_ROWS (12), 0 never.
   */
  fewRows?: number;
  /**
   * sgemm products with more than `gemvRows` and at most this many rows, over a weight matrix of at least
   * SPLIT_WEIGHTS floats, run their columns in two parts at once, on the calling thread and on a helper
   * thread, each on one OpenBLAS thread (with 2 or more threads); default SPLIT_ROWS (24), 0 never.
   */
  splitRows?: number;
}

/** Outcome of `enableNativeMatmul`; `reason` says which library was loaded, or why none was. */
export interface NativeMatmulStatus {
  enabled: boolean;
  reason: string;
}

const CBLAS_ROW_MAJOR = 101;
const CBLAS_NO_TRANS = 111;
const CBLAS_TRANS = 112;
const DEFAULT_MIN_WORK = 0;
const KERNEL_NAMES = [tf.BatchMatMul, tf._FusedMatMul] as const;

// Synchronous calls (`nonblocking: false`): a TF.js kernel must return its output, and the wasm heap
// must not be touched by anyone else while OpenBLAS writes into it.
const SYMBOLS = {
  cblas_sgemm: {
    parameters: [
      "i32", // order
      "i32", // transA
      "i32", // transB
      "i32", // M
      "i32", // N
      "i32", // K
      "f32", // alpha
      "buffer", // A
      "i32", // lda
      "buffer", // B
      "i32", // ldb
      "f32", // beta
      "buffer", // C
      "i32", // ldc
    ],
    result: "void",
    nonblocking: false,
  },
  cblas_sgemv: {
    parameters: [
      "i32", // order
      "i32", // trans
      "i32", // M
      "i32", // N
      "f32", // alpha
      "buffer", // A
      "i32", // lda
      "buffer", // x
      "i32", // incx
      "f32", // beta
      "buffer", // y
      "i32", // incy
    ],
    result: "void",
    nonblocking: false,
  },
  openblas_set_num_threads: { parameters: ["i32"], result: "void", nonblocking: false, optional: true },
  openblas_get_num_threads: { parameters: [], result: "i32", nonblocking: false, optional: true },
  openblas_get_config: { parameters: [], result: "pointer", nonblocking: false, optional: true },
} as const satisfies Deno.ForeignLibraryInterface;

type Blas = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** The parts of tfjs-backend-wasm's `BackendWasm` this file relies on. */
interface WasmBackend {
  wasm: { HEAPU8: Uint8Array };
  dataIdMap: { get(dataId: object): { memoryOffset: number; shape: number[] } | undefined };
  makeOutput(shape: number[], dtype: "float32"): TensorInfo;
}

interface KernelArgs {
  inputs: NamedTensorInfoMap;
  backend: unknown;
  attrs?: Record<string, unknown>;
}

interface State {
  /** The wasm backend's own kernels, by kernel name, restored by `disableNativeMatmul`. */
  originals: Map<string, KernelConfig>;
}

let loaded: { library: Deno.DynamicLibrary<typeof SYMBOLS>; path: string } | undefined;
let state: State | undefined;
let minWork = DEFAULT_MIN_WORK;
let gemvRows = 0;
let fewRows = 0;
let splitRows = 0;
let threadCount = 1;
/** The helper thread of split products, started with the first library that opens (see `splitRows`). */
let helper: SgemmHelper | undefined;
/** Products split so far (`nativeMatmulSplits`). */
let splits = 0;

/**
 * sgemm calls with fewer multiply-adds than this run on one OpenBLAS thread. OpenBLAS splits anything above
 * 262,144 across its threads, and waking a parked worker costs more than such a product saves, most of all
 * when other processes hold the cores: a decoding step at the tiny size (products of 8 x 128 x 512 and
 * smaller) took 2.6-3.0 ms with them on two threads and 1.5-1.7 ms on one, on 2 cores at load 6. Larger
 * products keep both threads, even with few rows: gpt2-8x512 generated 253-267 tokens/s with its 8-row
 * products on two threads and 156-158 on one, at load 2 (the LM head's; for the blocks' see FEW_ROWS).
 */
const SINGLE_THREAD_WORK = 4_000_000;

/**
 * Products with at most this many rows run as one sgemv a row. The products of a gpt2-8x512 decoding step, with
 * the weights (206 MB) coming from memory, took 6.8 ms for 1 row this way against 16.7 for sgemm and 12.2 split
 * (SPLIT_ROWS), and 12.5 ms for 2 rows against 18.2 and 12.2; 4 rows split took 12.2 ms against sgemv's 19.9
 * (`deno task bench:matmul`).
 */
const GEMV_ROWS = 2;

/**
 * sgemm products of FEW_ROWS_FROM to `fewRows` (default FEW_ROWS) rows over a weight matrix (k x n) of at most
 * FEW_ROWS_WEIGHTS floats run on one thread whatever their work, where the helper thread does not split them
 * (SPLIT_ROWS): OpenBLAS's split of such a product across its threads costs more than it saves.
 * `deno task bench:matmul`'s decoding table (gpt2-8x512's 32 block products and LM head a step, from memory), sgemm
 * on two threads against the blocks on one: 8 rows 25.7 against 24.2 ms, 12 rows 38.7 against 32.0, but 6 rows 23.9
 * against 25.4 and 16 rows 20.1 against 26.0. The LM head (50,257 x 512, 26M floats) keeps both threads, as
 * SINGLE_THREAD_WORK says.
 */
const FEW_ROWS_FROM = 8;
const FEW_ROWS = 12;
const FEW_ROWS_WEIGHTS = 4 * 1024 * 1024;

/**
 * Products of more than `gemvRows` and at most SPLIT_ROWS rows over weights of at least SPLIT_WEIGHTS floats run
 * their columns in two halves at once, one on a helper thread (`_sgemm_helper.ts`), each on one OpenBLAS thread;
 * smaller products do not repay the helper's round trip (about 8 µs). `deno task bench:matmul`'s decoding table
 * (gpt2-8x512's products a step, from memory), split against sgemm on the threads its work asks for: 4 rows 12.2
 * against 21.0 ms, 8 rows 14.8 against 23.2, 12 rows 16.8 against 37.4, 24 rows 26.4 against 33.3; at 16 and 32
 * rows either wins from one run to the next.
 */
const SPLIT_ROWS = 24;
const SPLIT_WEIGHTS = 256 * 1024;

/**
 * A split product with a transposed B of at least CHUNKED_FROM columns (an LM head over a vocabulary) runs in chunks
 * of CHUNK_COLUMNS columns on each thread, so that each chunk's packed copy stays in the cache: gpt2-8x512's LM head
 * for 8 rows took 7.4-7.5 ms in chunks of 512-1,024 against 8.5-8.8 in two halves (and 13.9-14.2 on OpenBLAS's own
 * two threads).
 */
const CHUNKED_FROM = 8192;
const CHUNK_COLUMNS = 1024;

/** Routes wasm-backend matmuls to OpenBLAS; idempotent, never throws, reports why it could not. */
export function enableNativeMatmul(options: NativeMatmulOptions = {}): NativeMatmulStatus {
  try {
    return enable(options);
  } catch (error) {
    return { enabled: false, reason: `Cannot enable native matmul: ${String(error)}` };
  }
}

/** y = alpha op(A) x + beta y for a row-major A [m, n]: op(A) is A^T with `transpose`. */
export type Gemv = (
  transpose: boolean,
  m: number,
  n: number,
  alpha: number,
  a: Float32Array,
  x: Float32Array,
  beta: number,
  y: Float32Array,
) => void;

/** OpenBLAS's sgemv while native matmul is enabled (the decoding kernels' attention uses it), else undefined. */
export function nativeGemv(): Gemv | undefined {
  if (state === undefined || loaded === undefined) return undefined;
  const sgemv = loaded.library.symbols.cblas_sgemv;
  return (transpose, m, n, alpha, a, x, beta, y) =>
    sgemv(CBLAS_ROW_MAJOR, transpose ? CBLAS_TRANS : CBLAS_NO_TRANS, m, n, alpha, a, n, x, 1, beta, y, 1);
}

/** Resolves once the helper thread of split products (`splitRows`) has started: whether it runs them. */
export function nativeMatmulHelperStarted(): Promise<boolean> {
  return helper?.started ?? Promise.resolve(false);
}

/** How many products have run split with the helper thread in this process (for tests and benchmarks). */
export function nativeMatmulSplits(): number {
  return splits;
}

/** Restores the wasm backend's own matmul kernels; a no-op when native matmul is not enabled. */
export function disableNativeMatmul(): void {
  if (state === undefined) return;
  for (const [name, original] of state.originals) {
    tf.unregisterKernel(name, "wasm");
    tf.registerKernel(original);
  }
  // The library stays open: OpenBLAS worker threads may still be parked in its code.
  state = undefined;
}

function enable(options: NativeMatmulOptions): NativeMatmulStatus {
  const work = options.minWork ?? DEFAULT_MIN_WORK;
  if (!(work >= 0)) {
    return {
      enabled: false,
      reason: `Cannot enable native matmul as 'minWork' must be >= 0: current value is ${work}`,
    };
  }
  const rows = {
    gemvRows: options.gemvRows ?? GEMV_ROWS,
    fewRows: options.fewRows ?? FEW_ROWS,
    splitRows: options.splitRows ?? SPLIT_ROWS,
  };
  for (const [name, value] of Object.entries(rows)) {
    if (!Number.isInteger(value) || value < 0) {
      return {
        enabled: false,
        reason: `Cannot enable native matmul as '${name}' must be an integer >= 0: current value is ${value}`,
      };
    }
  }
  const threads = options.threads ?? navigator.hardwareConcurrency;
  if (!Number.isInteger(threads) || threads < 1) {
    return {
      enabled: false,
      reason: `Cannot enable native matmul as 'threads' must be a positive integer: current value is ${threads}`,
    };
  }
  if (typeof Deno === "undefined" || typeof Deno.dlopen !== "function") {
    return { enabled: false, reason: "Cannot enable native matmul as Deno.dlopen is unavailable in this runtime" };
  }
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return {
      enabled: false,
      reason: "Cannot enable native matmul as the ffi permission is not granted (run with --allow-ffi)",
    };
  }
  if (loaded === undefined) {
    const candidates = libraryCandidates(options.libraryPath);
    const failures: string[] = [];
    for (const path of candidates) {
      try {
        loaded = { library: Deno.dlopen(path, SYMBOLS), path };
        break;
      } catch (error) {
        // Deno repeats "Could not open library: "; dlerror's own text already names the path.
        const message = error instanceof Error ? error.message : String(error);
        failures.push(message.replace(/^(Could not open library: )+/, ""));
      }
    }
    if (loaded === undefined) {
      return {
        enabled: false,
        reason: `Cannot enable native matmul as no BLAS library with cblas_sgemm could be opened ` +
          `(install libopenblas0-pthread or set OPENBLAS_LIB); tried ${failures.join("; ")}`,
      };
    }
  }
  minWork = work;
  gemvRows = rows.gemvRows;
  fewRows = rows.fewRows;
  splitRows = rows.splitRows;
  const blas = loaded.library.symbols;
  blas.openblas_set_num_threads?.(threads);
  const actualThreads = blas.openblas_get_num_threads?.() ?? 1;
  threadCount = actualThreads;
  if (helper === undefined && threadCount > 1 && splitRows > 0) helper = startSgemmHelper(loaded.path);
  const config = blas.openblas_get_config
    ? Deno.UnsafePointerView.getCString(blas.openblas_get_config()!)
    : "unknown BLAS";
  const description = `${config} from ${loaded.path}, ${actualThreads} thread(s)` +
    (minWork > 0 ? `, minWork ${minWork}` : "") +
    (helper !== undefined && threadCount > 1 && splitRows > gemvRows
      ? `, products of ${gemvRows + 1}-${splitRows} rows split with a helper thread`
      : "");
  if (state !== undefined) return { enabled: true, reason: `already enabled: ${description}` };

  const originals = new Map<string, KernelConfig>();
  for (const name of KERNEL_NAMES) {
    const original = tf.getKernel(name, "wasm");
    if (original === undefined) {
      return {
        enabled: false,
        reason:
          `Cannot enable native matmul as kernel '${name}' is not registered for the wasm backend: import "@tensorflow/tfjs-backend-wasm" first`,
      };
    }
    originals.set(name, original);
  }
  state = { originals };
  for (const [name, original] of originals) {
    const kernelFunc = name === tf.BatchMatMul ? batchMatMulKernel(blas, original) : fusedMatMulKernel(blas, original);
    tf.unregisterKernel(name, "wasm");
    // The original's setup binds its wasm function; it must still run if the backend initialises
    // after this, because small or non-float32 products fall back to the original kernel.
    tf.registerKernel({ ...original, kernelFunc });
  }
  return { enabled: true, reason: description };
}

function libraryCandidates(libraryPath: string | undefined): string[] {
  const candidates: string[] = [];
  if (libraryPath !== undefined) candidates.push(libraryPath);
  if (Deno.permissions.querySync({ name: "env", variable: "OPENBLAS_LIB" }).state === "granted") {
    const fromEnv = Deno.env.get("OPENBLAS_LIB");
    if (fromEnv) candidates.push(fromEnv);
  }
  if (Deno.build.os === "darwin") {
    candidates.push(
      "libopenblas.dylib",
      "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
      "/usr/local/opt/openblas/lib/libopenblas.dylib",
    );
  } else {
    const arch = Deno.build.arch === "aarch64" ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
    candidates.push(
      "libopenblas.so.0",
      `/usr/lib/${arch}/libopenblas.so.0`,
      `/usr/lib/${arch}/openblas-pthread/libopenblas.so.0`,
      `/usr/lib/${arch}/openblas-openmp/libopenblas.so.0`,
      "libopenblas.so",
    );
  }
  return candidates;
}

/** Shapes of one (possibly broadcast) batched product, as tf.matMul defines them. */
interface Product {
  m: number;
  n: number;
  k: number;
  outShape: number[];
  batch: number;
  /** Batch index into `a` (and `b`) for each output batch index; null when it is the identity. */
  aIndex: Int32Array | null;
  bIndex: Int32Array | null;
  /** Number of matrices in `b`. */
  bCount: number;
}

function describeProduct(a: TensorInfo, b: TensorInfo, transposeA: boolean, transposeB: boolean): Product {
  const aRank = a.shape.length;
  const bRank = b.shape.length;
  tf.util.assert(
    aRank >= 2 && bRank >= 2,
    () => `Error in matMul: inputs must have rank >= 2: current ranks are ${aRank} and ${bRank}`,
  );
  const k = transposeA ? a.shape[aRank - 2]! : a.shape[aRank - 1]!;
  const kB = transposeB ? b.shape[bRank - 1]! : b.shape[bRank - 2]!;
  const m = transposeA ? a.shape[aRank - 1]! : a.shape[aRank - 2]!;
  const n = transposeB ? b.shape[bRank - 2]! : b.shape[bRank - 1]!;
  tf.util.assert(
    k === kB,
    () =>
      `Error in matMul: inner shapes (${k}) and (${kB}) of Tensors with shapes ${a.shape} and ${b.shape} ` +
      `and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
  );
  const aBatch = a.shape.slice(0, -2);
  const bBatch = b.shape.slice(0, -2);
  const batchShape = tf.broadcast_util.assertAndGetBroadcastShape(aBatch, bBatch);
  const batch = tf.util.sizeFromShape(batchShape);
  return {
    m,
    n,
    k,
    outShape: [...batchShape, m, n],
    batch,
    aIndex: broadcastIndex(aBatch, batchShape, batch),
    bIndex: broadcastIndex(bBatch, batchShape, batch),
    bCount: tf.util.sizeFromShape(bBatch),
  };
}

/** For each index of the broadcast batch, the index into `shape`'s batch (numpy broadcasting). */
function broadcastIndex(shape: number[], outShape: number[], batch: number): Int32Array | null {
  const size = tf.util.sizeFromShape(shape);
  if (size === batch) return null;
  const index = new Int32Array(batch);
  if (size <= 1) return index;
  const offset = outShape.length - shape.length;
  for (let i = 0; i < batch; i++) {
    let rest = i;
    let source = 0;
    let stride = 1;
    for (let d = outShape.length - 1; d >= 0; d--) {
      const dim = outShape[d]!;
      const coord = rest % dim;
      rest = (rest - coord) / dim;
      const own = d - offset;
      if (own >= 0) {
        const ownDim = shape[own]!;
        if (ownDim !== 1) source += coord * stride;
        stride *= ownDim;
      }
    }
    index[i] = source;
  }
  return index;
}

/** Writes op(A)·op(B) (+ beta·C) for every batch entry into the output block at `outOffset`. */
function runGemm(
  blas: Blas,
  heap: ArrayBuffer,
  offsets: { a: number; b: number; out: number },
  p: Product,
  transposeA: boolean,
  transposeB: boolean,
  beta: number,
): void {
  const { m, n, k } = p;
  const ta = transposeA ? CBLAS_TRANS : CBLAS_NO_TRANS;
  const tb = transposeB ? CBLAS_TRANS : CBLAS_NO_TRANS;
  const lda = transposeA ? m : k;
  const ldb = transposeB ? k : n;
  const aSize = m * k;
  const bSize = k * n;
  const cSize = m * n;
  // One call for the common [B, T, C] x [C, N]: rows of a non-transposed A stack into one matrix.
  const stacked = p.aIndex === null && p.bCount === 1 && !transposeA;
  const allRows = stacked ? p.batch * m : m;
  const split = helper !== undefined && helper.ready() && threadCount > 1 && allRows > gemvRows &&
    allRows <= splitRows && n * k >= SPLIT_WEIGHTS && n >= 32;
  const few = allRows > gemvRows && allRows >= FEW_ROWS_FROM && allRows <= fewRows && n * k <= FEW_ROWS_WEIGHTS;
  const single = threadCount > 1 && (allRows * n * k < SINGLE_THREAD_WORK || few || split);
  const gemm = (rows: number, aOffset: number, bOffset: number, cOffset: number) => {
    if (rows <= gemvRows) {
      // One or two rows (decoding for one or two requests): sgemv reads the weights once for the first row and
      // from cache for the next, where sgemm first copies (packs) them.
      const xStride = transposeA ? lda : 1;
      for (let r = 0; r < rows; r++) {
        const xAt = aOffset + 4 * (transposeA ? r : r * k);
        blas.cblas_sgemv(
          CBLAS_ROW_MAJOR,
          transposeB ? CBLAS_NO_TRANS : CBLAS_TRANS,
          transposeB ? n : k,
          transposeB ? k : n,
          1,
          new Float32Array(heap, bOffset, bSize),
          ldb,
          new Float32Array(heap, xAt, (k - 1) * xStride + 1),
          xStride,
          beta,
          new Float32Array(heap, cOffset + 4 * r * n, n),
          1,
        );
      }
      return;
    }
    // Split: the helper takes `count` chunks of `width` columns from `half` on (aligned to 16 floats), this thread
    // the columns before and after them. An LM head's columns go in chunks of CHUNK_COLUMNS on both sides.
    const chunked = split && transposeB && n >= CHUNKED_FROM;
    const half = split ? (n >> 5) << 4 : n;
    const width = chunked ? CHUNK_COLUMNS : n - half;
    const count = chunked ? Math.floor((n - half) / width) : 1;
    if (split) {
      const base = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(new Uint8Array(heap))));
      helper!.post({
        transA: ta,
        transB: tb,
        m: rows,
        n: width,
        k,
        a: base + aOffset,
        lda,
        b: base + bOffset + 4 * (transposeB ? half * ldb : half),
        ldb,
        beta,
        c: base + cOffset + 4 * half,
        ldc: n,
        count,
        stepB: 4 * (transposeB ? width * ldb : width),
        stepC: 4 * width,
      });
      splits++;
    }
    const step = chunked ? CHUNK_COLUMNS : n;
    const a = new Float32Array(heap, aOffset, rows * k);
    const columns = (from: number, to: number) => {
      for (let start = from; start < to; start += step) {
        blas.cblas_sgemm(
          CBLAS_ROW_MAJOR,
          ta,
          tb,
          rows,
          Math.min(step, to - start),
          k,
          1,
          a,
          lda,
          new Float32Array(heap, bOffset + 4 * (transposeB ? start * ldb : start)),
          ldb,
          beta,
          new Float32Array(heap, cOffset + 4 * start),
          n,
        );
      }
    };
    columns(0, half);
    if (split) {
      columns(half + count * width, n);
      helper!.wait();
    }
  };
  if (single) blas.openblas_set_num_threads?.(1);
  try {
    if (stacked) {
      gemm(p.batch * m, offsets.a, offsets.b, offsets.out);
      return;
    }
    for (let i = 0; i < p.batch; i++) {
      const ai = p.aIndex === null ? i : p.aIndex[i]!;
      const bi = p.bIndex === null ? i : p.bIndex[i]!;
      gemm(m, offsets.a + 4 * ai * aSize, offsets.b + 4 * bi * bSize, offsets.out + 4 * i * cSize);
    }
  } finally {
    if (single) blas.openblas_set_num_threads?.(threadCount);
  }
}

function offsetOf(backend: WasmBackend, t: TensorInfo): number {
  const data = backend.dataIdMap.get(t.dataId);
  if (data === undefined) {
    throw new Error(`Cannot run native matmul as a tensor of shape [${t.shape}] has no data on the wasm backend`);
  }
  return data.memoryOffset;
}

function batchMatMulKernel(blas: Blas, original: KernelConfig): KernelFunc {
  return (args) => {
    const { inputs, attrs } = args as KernelArgs;
    const backend = args.backend as unknown as WasmBackend;
    const a = inputs.a!;
    const b = inputs.b!;
    if (a.dtype !== "float32" || b.dtype !== "float32") return original.kernelFunc(args);
    const transposeA = attrs?.transposeA === true;
    const transposeB = attrs?.transposeB === true;
    const p = describeProduct(a, b, transposeA, transposeB);
    const work = p.batch * p.m * p.n * p.k;
    if (work > 0 && work < minWork) return original.kernelFunc(args);

    const out = backend.makeOutput(p.outShape, "float32");
    const outSize = p.batch * p.m * p.n;
    if (outSize === 0) return out;
    const heap = backend.wasm.HEAPU8.buffer as ArrayBuffer; // after makeOutput: it may have grown
    const outOffset = offsetOf(backend, out);
    if (p.k === 0) {
      new Float32Array(heap, outOffset, outSize).fill(0);
      return out;
    }
    runGemm(
      blas,
      heap,
      { a: offsetOf(backend, a), b: offsetOf(backend, b), out: outOffset },
      p,
      transposeA,
      transposeB,
      0,
    );
    return out;
  };
}

/** `_FusedMatMul` with no bias or a rank-1 bias, and a linear or relu activation; the rest falls back. */
function fusedMatMulKernel(blas: Blas, original: KernelConfig): KernelFunc {
  return (args) => {
    const { inputs, attrs } = args as KernelArgs;
    const backend = args.backend as unknown as WasmBackend;
    const a = inputs.a!;
    const b = inputs.b!;
    const bias = inputs.bias;
    const activation = attrs?.activation ?? "linear";
    const supported = a.dtype === "float32" && b.dtype === "float32" && inputs.preluActivationWeights == null &&
      (activation === "linear" || activation === "relu") &&
      (bias == null || (bias.dtype === "float32" && bias.shape.length === 1));
    if (!supported) return original.kernelFunc(args);
    const transposeA = attrs?.transposeA === true;
    const transposeB = attrs?.transposeB === true;
    const p = describeProduct(a, b, transposeA, transposeB);
    const biasSize = bias == null ? 0 : bias.shape[0]!;
    if (bias != null && biasSize !== p.n && biasSize !== 1) return original.kernelFunc(args);
    const work = p.batch * p.m * p.n * p.k;
    if (work > 0 && work < minWork) return original.kernelFunc(args);

    const out = backend.makeOutput(p.outShape, "float32");
    const outSize = p.batch * p.m * p.n;
    if (outSize === 0) return out;
    const heap = backend.wasm.HEAPU8.buffer as ArrayBuffer;
    const outOffset = offsetOf(backend, out);
    const c = new Float32Array(heap, outOffset, outSize);
    if (bias == null) {
      if (p.k === 0) c.fill(0);
    } else if (biasSize === 1) c.fill(new Float32Array(heap, offsetOf(backend, bias), 1)[0]!);
    else fillRows(c, new Float32Array(heap, offsetOf(backend, bias), biasSize));
    if (p.k > 0) {
      runGemm(
        blas,
        heap,
        { a: offsetOf(backend, a), b: offsetOf(backend, b), out: outOffset },
        p,
        transposeA,
        transposeB,
        bias == null ? 0 : 1,
      );
    }
    if (activation === "relu") {
      for (let i = 0; i < outSize; i++) if (c[i]! < 0) c[i] = 0;
    }
    return out;
  };
}

/** Tiles `row` over `c` with log2(rows) copies rather than one per row. */
function fillRows(c: Float32Array, row: Float32Array): void {
  c.set(row, 0);
  let filled = row.length;
  while (filled < c.length) {
    const count = Math.min(filled, c.length - filled);
    c.copyWithin(filled, 0, count);
    filled += count;
  }
}
