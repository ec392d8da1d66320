/**
 * LayerNorm and the sigmoid-form GELU, forward and backward, each as one kernel on the wasm backend for
 * training and scoring. Composed from TF.js ops LayerNorm is nine kernels forward and eleven backward (two of
 * them matmuls), the GELU seven and nine, each a pass over a [B*T, C] or [B*T, 4C] tensor into a fresh one;
 * these make one pass (LayerNorm: three over each row, which stays in cache) in WebAssembly SIMD on TF.js's
 * heap, four lanes at a time in float32 as the composed ops compute. At gpt2-8x512's [1024, 512] and
 * [1024, 2048] here: LayerNorm 1.6 -> 0.36 ms forward, 2.5 -> 0.39 backward; GELU 6.8 -> 2.8 and 8.3 -> 1.1
 * (a JavaScript loop with Math.exp took 38 ms for the GELU's forward). Log softmax at the targets and attention's
 * masked softmax are one kernel each way with the same vectorized exp, and attention's split of q, k and v into
 * heads and its inverse are one copy kernel each. They have no gradient of their own: `_ops.ts` pairs forward and
 * backward in `customOp`s. On the wasm backend only, off TF.js's tape (`trainKernelsApply`); elsewhere the composed
 * ops run. The decoding kernels' attention of one head (`heapAttendHead`) lives here too, for the same exp.
 */
import * as tf from "../tf.ts";
import { compiledOnce, F32, I32, loopTo, op, V128, wasmModule } from "../../util/wasm.ts";
import { heapOffset, type WasmHeapBackend } from "./heap.ts";

interface WasmBackendInternals extends WasmHeapBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
}

interface KernelArgs {
  inputs: tf.NamedTensorInfoMap;
  attrs?: tf.NamedAttrMap;
  backend: unknown;
}

const LAYER_NORM = "DpoTrainLayerNorm";
const LAYER_NORM_GRAD = "DpoTrainLayerNormGrad";
const SIGMOID_GATE = "DpoTrainSigmoidGate";
const SIGMOID_GATE_GRAD = "DpoTrainSigmoidGateGrad";
const SPLIT_HEADS = "DpoTrainSplitHeads";
const TARGET_LOG_SOFTMAX = "DpoTrainTargetLogSoftmax";
const TARGET_LOG_SOFTMAX_GRAD = "DpoTrainTargetLogSoftmaxGrad";
const MERGE_HEADS = "DpoTrainMergeHeads";
const ATTENTION_SOFTMAX = "DpoTrainAttentionSoftmax";
const ATTENTION_SOFTMAX_GRAD = "DpoTrainAttentionSoftmaxGrad";

const { localGet: get, localSet: set, localTee: tee } = op;

/** Address base + i. */
const at = (base: number, i: number) => [...get(base), ...get(i), ...op.i32Add];
/** Four floats at base + i, and one. */
const vec = (base: number, i: number) => [...at(base, i), ...op.v128Load(0)];
const one = (base: number, i: number) => [...at(base, i), ...op.f32Load(0)];
/** Stores the value `value` leaves at base + i. */
const storeVec = (base: number, i: number, value: number[]) => [...at(base, i), ...value, ...op.v128Store(0)];
const storeOne = (base: number, i: number, value: number[]) => [...at(base, i), ...value, ...op.f32Store(0)];
/** The four lanes of a v128 local summed, in lane order. */
const lanes = (v: number) => [
  ...get(v),
  ...op.f32x4ExtractLane(0),
  ...[1, 2, 3].flatMap((lane) => [...get(v), ...op.f32x4ExtractLane(lane), ...op.f32Add]),
];
const zeros = [...op.f32Const(0), ...op.f32x4Splat];
/** local += by (an i32 local advanced by a row). */
const advance = (local: number, by: number[]) => [...get(local), ...by, ...op.i32Add, ...set(local)];
/** Row sizes in bytes: cb = C * 4 (every float), c4 = (C & ~3) * 4 (the SIMD part), n = C as a float. */
const rowSizes = (C: number, cb: number, c4: number, n: number) => [
  ...rowBytes(C, cb, c4),
  ...get(C),
  ...op.f32ConvertI32U,
  ...set(n),
];
/** cb = C * 4 (a row's bytes) and c4 = (C & ~3) * 4 (its SIMD part). */
function rowBytes(C: number, cb: number, c4: number): number[] {
  return [
    ...get(C),
    ...op.i32Const(2),
    ...op.i32Shl,
    ...set(cb),
    ...get(C),
    ...op.i32Const(-4),
    ...op.i32And,
    ...op.i32Const(2),
    ...op.i32Shl,
    ...set(c4),
  ];
}
/**
 * dot = Σ x[i] · y[i] over one row of nb bytes (the first n4 four lanes at a time into acc, summed in lane order,
 * then the rest one by one); i is the byte index, from 0.
 */
function rowDot(x: number, y: number, [i, n4, nb]: [number, number, number], acc: number, dot: number): number[] {
  return [
    ...zeros,
    ...set(acc),
    ...op.i32Const(0),
    ...set(i),
    ...loopTo(i, n4, 16, [...get(acc), ...vec(x, i), ...vec(y, i), ...op.f32x4Mul, ...op.f32x4Add, ...set(acc)]),
    ...lanes(acc),
    ...set(dot),
    ...loopTo(i, nb, 4, [...get(dot), ...one(x, i), ...one(y, i), ...op.f32Mul, ...op.f32Add, ...set(dot)]),
  ];
}
/** `while (rows-- > 0) { body; each pointer += its step }`, rows an i32 local. */
const eachRow = (rows: number, body: number[], steps: [number, number[]][]) => [
  ...op.block,
  ...op.loop,
  ...get(rows),
  ...op.i32Eqz,
  ...op.brIf(1),
  ...body,
  ...steps.flatMap(([pointer, by]) => advance(pointer, by)),
  ...advance(rows, op.i32Const(-1)),
  ...op.br(0),
  ...op.end,
  ...op.end,
];

/**
 * layerNorm(x, w, b, y, xhat, rstd, rows, C, eps), byte offsets of rows [rows, C]: per row
 * mean, rstd = 1 / sqrt(mean((x - mean)²) + eps), xhat = (x - mean) · rstd, y = xhat · w + b.
 */
function layerNormBody(): number[] {
  const [x, w, b, y, xh, rs, rows, C, eps] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const [c, c4, cb] = [9, 10, 11];
  const [acc, t, meanV, rstdV] = [12, 13, 14, 15];
  const [sum, mean, rstd, d, n] = [16, 17, 18, 19, 20];
  return [
    ...rowSizes(C, cb, c4, n),
    ...op.block,
    ...op.loop,
    ...get(rows),
    ...op.i32Eqz,
    ...op.brIf(1),
    // The mean.
    ...zeros,
    ...set(acc),
    ...op.i32Const(0),
    ...set(c),
    ...loopTo(c, c4, 16, [...get(acc), ...vec(x, c), ...op.f32x4Add, ...set(acc)]),
    ...lanes(acc),
    ...set(sum),
    ...loopTo(c, cb, 4, [...get(sum), ...one(x, c), ...op.f32Add, ...set(sum)]),
    ...get(sum),
    ...get(n),
    ...op.f32Div,
    ...tee(mean),
    ...op.f32x4Splat,
    ...set(meanV),
    // The variance, from the centered values as the composed ops compute it.
    ...zeros,
    ...set(acc),
    ...op.i32Const(0),
    ...set(c),
    ...loopTo(c, c4, 16, [
      ...vec(x, c),
      ...get(meanV),
      ...op.f32x4Sub,
      ...tee(t),
      ...get(t),
      ...op.f32x4Mul,
      ...get(acc),
      ...op.f32x4Add,
      ...set(acc),
    ]),
    ...lanes(acc),
    ...set(sum),
    ...loopTo(c, cb, 4, [
      ...one(x, c),
      ...get(mean),
      ...op.f32Sub,
      ...tee(d),
      ...get(d),
      ...op.f32Mul,
      ...get(sum),
      ...op.f32Add,
      ...set(sum),
    ]),
    ...op.f32Const(1),
    ...get(sum),
    ...get(n),
    ...op.f32Div,
    ...get(eps),
    ...op.f32Add,
    ...op.f32Sqrt,
    ...op.f32Div,
    ...set(rstd),
    ...get(rs),
    ...get(rstd),
    ...op.f32Store(0),
    ...get(rstd),
    ...op.f32x4Splat,
    ...set(rstdV),
    // xhat and y.
    ...op.i32Const(0),
    ...set(c),
    ...loopTo(c, c4, 16, [
      ...storeVec(xh, c, [...vec(x, c), ...get(meanV), ...op.f32x4Sub, ...get(rstdV), ...op.f32x4Mul, ...tee(t)]),
      ...storeVec(y, c, [...get(t), ...vec(w, c), ...op.f32x4Mul, ...vec(b, c), ...op.f32x4Add]),
    ]),
    ...loopTo(c, cb, 4, [
      ...storeOne(xh, c, [...one(x, c), ...get(mean), ...op.f32Sub, ...get(rstd), ...op.f32Mul, ...tee(d)]),
      ...storeOne(y, c, [...get(d), ...one(w, c), ...op.f32Mul, ...one(b, c), ...op.f32Add]),
    ]),
    ...advance(x, get(cb)),
    ...advance(y, get(cb)),
    ...advance(xh, get(cb)),
    ...advance(rs, op.i32Const(4)),
    ...advance(rows, op.i32Const(-1)),
    ...op.br(0),
    ...op.end,
    ...op.end,
  ];
}

/**
 * layerNormGrad(dy, xhat, rstd, w, dx, dw, db, rows, C): with dxhat = dy · w, per row
 *   dx = rstd · ((dxhat − mean(dxhat)) − xhat · mean(dxhat · xhat)),
 * and over the rows dw = Σ dy · xhat, db = Σ dy (float32 sums down the rows, zeroed first).
 */
function layerNormGradBody(): number[] {
  const [dy, xh, rs, w, dx, dw, db, rows, C] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const [c, c4, cb] = [9, 10, 11];
  const [accA, accB, t, g, h, maV, mbV, rV] = [12, 13, 14, 15, 16, 17, 18, 19];
  const [sa, sb, r, d, n, gs, hs] = [20, 21, 22, 23, 24, 25, 26];
  return [
    ...rowSizes(C, cb, c4, n),
    ...op.i32Const(0),
    ...set(c),
    ...loopTo(c, cb, 4, [...storeOne(dw, c, op.f32Const(0)), ...storeOne(db, c, op.f32Const(0))]),
    ...op.block,
    ...op.loop,
    ...get(rows),
    ...op.i32Eqz,
    ...op.brIf(1),
    // mean(dxhat) and mean(dxhat · xhat).
    ...zeros,
    ...tee(accA),
    ...set(accB),
    ...op.i32Const(0),
    ...set(c),
    ...loopTo(c, c4, 16, [
      ...vec(dy, c),
      ...vec(w, c),
      ...op.f32x4Mul,
      ...tee(t),
      ...get(accA),
      ...op.f32x4Add,
      ...set(accA),
      ...get(t),
      ...vec(xh, c),
      ...op.f32x4Mul,
      ...get(accB),
      ...op.f32x4Add,
      ...set(accB),
    ]),
    ...lanes(accA),
    ...set(sa),
    ...lanes(accB),
    ...set(sb),
    ...loopTo(c, cb, 4, [
      ...one(dy, c),
      ...one(w, c),
      ...op.f32Mul,
      ...tee(d),
      ...get(sa),
      ...op.f32Add,
      ...set(sa),
      ...get(d),
      ...one(xh, c),
      ...op.f32Mul,
      ...get(sb),
      ...op.f32Add,
      ...set(sb),
    ]),
    ...get(sa),
    ...get(n),
    ...op.f32Div,
    ...tee(sa),
    ...op.f32x4Splat,
    ...set(maV),
    ...get(sb),
    ...get(n),
    ...op.f32Div,
    ...tee(sb),
    ...op.f32x4Splat,
    ...set(mbV),
    ...get(rs),
    ...op.f32Load(0),
    ...tee(r),
    ...op.f32x4Splat,
    ...set(rV),
    // dx, and this row's share of dw and db.
    ...op.i32Const(0),
    ...set(c),
    ...loopTo(c, c4, 16, [
      ...vec(dy, c),
      ...set(g),
      ...vec(xh, c),
      ...set(h),
      ...storeVec(dx, c, [
        ...get(rV),
        ...get(g),
        ...vec(w, c),
        ...op.f32x4Mul,
        ...get(maV),
        ...op.f32x4Sub,
        ...get(h),
        ...get(mbV),
        ...op.f32x4Mul,
        ...op.f32x4Sub,
        ...op.f32x4Mul,
      ]),
      ...storeVec(dw, c, [...vec(dw, c), ...get(g), ...get(h), ...op.f32x4Mul, ...op.f32x4Add]),
      ...storeVec(db, c, [...vec(db, c), ...get(g), ...op.f32x4Add]),
    ]),
    ...loopTo(c, cb, 4, [
      ...one(dy, c),
      ...set(gs),
      ...one(xh, c),
      ...set(hs),
      ...storeOne(dx, c, [
        ...get(r),
        ...get(gs),
        ...one(w, c),
        ...op.f32Mul,
        ...get(sa),
        ...op.f32Sub,
        ...get(hs),
        ...get(sb),
        ...op.f32Mul,
        ...op.f32Sub,
        ...op.f32Mul,
      ]),
      ...storeOne(dw, c, [...one(dw, c), ...get(gs), ...get(hs), ...op.f32Mul, ...op.f32Add]),
      ...storeOne(db, c, [...one(db, c), ...get(gs), ...op.f32Add]),
    ]),
    ...advance(dy, get(cb)),
    ...advance(xh, get(cb)),
    ...advance(dx, get(cb)),
    ...advance(rs, op.i32Const(4)),
    ...advance(rows, op.i32Const(-1)),
    ...op.br(0),
    ...op.end,
    ...op.end,
  ];
}

/**
 * e^f ≈ 1 + f · P(f) on |f| <= ln(2) / 2, P of degree 4 (coefficients from the constant term up): a minimax
 * fit (Lawson's iteration) to the relative error, 9e−8 exactly and 1.7e−7 (1.4 ulp) evaluated in float32.
 */
const EXP_P = [0.9999997019767761, 0.4999915063381195, 0.1666763573884964, 0.04189793020486832, 0.008290314115583897];
/** ln 2 in two parts, the first exact in float32 with room for n · it to be exact too (Cephes's expf). */
const LN2_HI = 0.693359375;
const LN2_LO = -2.12194440e-4;
/**
 * 1.5 · 2^23 + 127: t · log2(e) plus this, in float32, rounds t · log2(e) to the integer n and leaves n + 127
 * in the low mantissa bits, which shifted left by 23 are 2^n's float32 bits (for n in [−126, 0]).
 */
const MAGIC = 12582912 + 127;

/** The v128 locals `expV` works in: its argument and two temporaries, and the constants `expConstants` sets. */
interface ExpLocals {
  f: number;
  j: number;
  nv: number;
  log2e: number;
  magic: number;
  ln2Hi: number;
  ln2Lo: number;
  floor: number;
  oneV: number;
  /** EXP_P.length locals from this one. */
  p: number;
}

/** Nine plus EXP_P.length v128 locals from `first`, for `expV`. */
function expLocals(first: number): ExpLocals {
  const names = ["f", "j", "nv", "log2e", "magic", "ln2Hi", "ln2Lo", "floor", "oneV", "p"] as const;
  return Object.fromEntries(names.map((name, k) => [name, first + k])) as unknown as ExpLocals;
}

const splat = (value: number[], local: number) => [...value, ...op.f32x4Splat, ...set(local)];

/** Sets the constants of `expV`. */
function expConstants(l: ExpLocals): number[] {
  return [
    ...splat(op.f32Const(1), l.oneV),
    ...splat(op.f32Const(Math.LOG2E), l.log2e),
    ...splat(op.f32Const(MAGIC), l.magic),
    ...splat(op.f32Const(LN2_HI), l.ln2Hi),
    ...splat(op.f32Const(LN2_LO), l.ln2Lo),
    ...splat(op.f32Const(-87), l.floor),
    ...EXP_P.flatMap((v, k) => splat(op.f32Const(v), l.p + k)),
  ];
}

/**
 * e^t for the four lanes on the stack, each t in [−87, 0] (clamp with `floor` first): n = round(t · log2(e)),
 * f = t − n · ln 2 and e^t = 2^n · (1 + f · P(f)). Leaves e^t on the stack.
 */
function expV(l: ExpLocals): number[] {
  const poly = [
    ...get(l.p + EXP_P.length - 1),
    ...EXP_P.slice(0, -1).reverse().flatMap((_, k) => [
      ...get(l.f),
      ...op.f32x4Mul,
      ...get(l.p + EXP_P.length - 2 - k),
      ...op.f32x4Add,
    ]),
    ...get(l.f),
    ...op.f32x4Mul,
    ...get(l.oneV),
    ...op.f32x4Add,
  ];
  return [
    // j = t · log2(e) + MAGIC; n = j − MAGIC; f = t − n · ln 2
    ...tee(l.f),
    ...get(l.f),
    ...get(l.log2e),
    ...op.f32x4Mul,
    ...get(l.magic),
    ...op.f32x4Add,
    ...tee(l.j),
    ...get(l.magic),
    ...op.f32x4Sub,
    ...tee(l.nv),
    ...get(l.ln2Hi),
    ...op.f32x4Mul,
    ...op.f32x4Sub,
    ...get(l.nv),
    ...get(l.ln2Lo),
    ...op.f32x4Mul,
    ...op.f32x4Sub,
    ...set(l.f),
    // (1 + f · P(f)) · 2^n
    ...poly,
    ...get(l.j),
    ...op.i32Const(23),
    ...op.i32x4Shl,
    ...op.f32x4Mul,
  ];
}

/**
 * sigmoidGate(x, y, s, nb, a, b) over nb bytes (a multiple of 16): z = (x · (x² · b + 1)) · a,
 * s = sigmoid(z), y = x · s. sigmoid(z) = q / (1 + e) with e = e^t, t = −|z|, and q = 1 for z >= 0, e
 * below: no overflow, and full relative precision on both tails. t is clamped at −87 (e ≈ 1.6e−38 stands
 * for anything smaller).
 */
function sigmoidGateBody(): number[] {
  const [x, y, s, nb, a, b] = [0, 1, 2, 3, 4, 5];
  const i = 6;
  const [X, z, e, aV, bV, sign] = [7, 8, 9, 10, 11, 12];
  const l = expLocals(13);
  return [
    ...splat(get(a), aV),
    ...splat(get(b), bV),
    ...splat(op.f32Const(-0), sign),
    ...expConstants(l),
    ...loopTo(i, nb, 16, [
      ...vec(x, i),
      ...tee(X),
      ...get(X),
      ...get(X),
      ...op.f32x4Mul,
      ...get(bV),
      ...op.f32x4Mul,
      ...get(l.oneV),
      ...op.f32x4Add,
      ...op.f32x4Mul,
      ...get(aV),
      ...op.f32x4Mul,
      ...tee(z),
      // t = max(−|z|, −87)
      ...get(sign),
      ...op.v128Or,
      ...get(l.floor),
      ...op.f32x4Pmax,
      ...expV(l),
      ...set(e),
      // s = (z >= 0 ? 1 : e) / (1 + e); y = x · s
      ...storeVec(s, i, [
        ...get(l.oneV),
        ...get(e),
        ...get(z),
        ...zeros,
        ...op.f32x4Ge,
        ...op.v128Bitselect,
        ...get(l.oneV),
        ...get(e),
        ...op.f32x4Add,
        ...op.f32x4Div,
        ...tee(e),
      ]),
      ...storeVec(y, i, [...get(X), ...get(e), ...op.f32x4Mul]),
    ]),
  ];
}

/** The largest of a v128 local's four lanes. */
const lanesMax = (v: number) => [
  ...get(v),
  ...op.f32x4ExtractLane(0),
  ...[1, 2, 3].flatMap((lane) => [...get(v), ...op.f32x4ExtractLane(lane), ...op.f32Max]),
];

/**
 * rowMaxSumExp(x, rows, V, max, sum, total), byte offsets, x [rows, V]: per row its max, the sum of e^(x − max)
 * (four partial sums in lane order, then the last V mod 4 terms; each term at least e^−87), and the plain sum
 * of x (the trainer's logits metric: one more add in the pass that finds the max, where a Sum kernel is another
 * pass over [rows, V]).
 */
function rowMaxSumExpBody(): number[] {
  const [x, rows, V, maxAt, sumAt, totalAt] = [0, 1, 2, 3, 4, 5];
  const [c, vb, v4] = [6, 7, 8];
  const [mx, sum, total] = [9, 10, 11];
  const [vmax, acc, mxV, xs, tot] = [12, 13, 14, 15, 16];
  const l = expLocals(17);
  const term = [...get(mxV), ...op.f32x4Sub, ...get(l.floor), ...op.f32x4Pmax, ...expV(l)];
  return [
    ...expConstants(l),
    ...rowBytes(V, vb, v4),
    ...eachRow(rows, [
      // The max and the plain sum.
      ...splat(op.f32Const(-Infinity), vmax),
      ...zeros,
      ...set(tot),
      ...op.i32Const(0),
      ...set(c),
      ...loopTo(c, v4, 16, [
        ...vec(x, c),
        ...set(xs),
        ...get(vmax),
        ...get(xs),
        ...op.f32x4Pmax,
        ...set(vmax),
        ...get(tot),
        ...get(xs),
        ...op.f32x4Add,
        ...set(tot),
      ]),
      ...lanesMax(vmax),
      ...set(mx),
      ...lanes(tot),
      ...set(total),
      ...loopTo(c, vb, 4, [
        ...get(mx),
        ...one(x, c),
        ...op.f32Max,
        ...set(mx),
        ...get(total),
        ...one(x, c),
        ...op.f32Add,
        ...set(total),
      ]),
      ...get(maxAt),
      ...get(mx),
      ...op.f32Store(0),
      ...get(totalAt),
      ...get(total),
      ...op.f32Store(0),
      ...splat(get(mx), mxV),
      // The sum of e^(x − max).
      ...zeros,
      ...set(acc),
      ...op.i32Const(0),
      ...set(c),
      ...loopTo(c, v4, 16, [...get(acc), ...vec(x, c), ...term, ...op.f32x4Add, ...set(acc)]),
      ...lanes(acc),
      ...set(sum),
      ...loopTo(c, vb, 4, [
        ...get(sum),
        ...one(x, c),
        ...op.f32x4Splat,
        ...term,
        ...op.f32x4ExtractLane(0),
        ...op.f32Add,
        ...set(sum),
      ]),
      ...get(sumAt),
      ...get(sum),
      ...op.f32Store(0),
    ], [[x, get(vb)], [maxAt, op.i32Const(4)], [sumAt, op.i32Const(4)], [totalAt, op.i32Const(4)]]),
  ];
}

/** softmaxScaled(x, rows, V, lse, dy, dx), byte offsets: dx = −dy · e^(x − lse) per row of x [rows, V]. */
function softmaxScaledBody(): number[] {
  const [x, rows, V, lseAt, dyAt, dx] = [0, 1, 2, 3, 4, 5];
  const [c, vb, v4] = [6, 7, 8];
  const [lseV, scaleV] = [9, 10];
  const l = expLocals(11);
  const term = [
    ...get(lseV),
    ...op.f32x4Sub,
    ...get(l.floor),
    ...op.f32x4Pmax,
    ...expV(l),
    ...get(scaleV),
    ...op.f32x4Mul,
  ];
  return [
    ...expConstants(l),
    ...rowBytes(V, vb, v4),
    ...eachRow(rows, [
      ...splat([...get(lseAt), ...op.f32Load(0)], lseV),
      ...splat([...op.f32Const(0), ...get(dyAt), ...op.f32Load(0), ...op.f32Sub], scaleV),
      ...op.i32Const(0),
      ...set(c),
      ...loopTo(c, v4, 16, storeVec(dx, c, [...vec(x, c), ...term])),
      ...loopTo(c, vb, 4, storeOne(dx, c, [...one(x, c), ...op.f32x4Splat, ...term, ...op.f32x4ExtractLane(0)])),
    ], [[x, get(vb)], [dx, get(vb)], [lseAt, op.i32Const(4)], [dyAt, op.i32Const(4)]]),
  ];
}

/**
 * e = e^(z − max) for the four lanes of z on the stack, or 0 where z − max is below the floor (e^−87: a masked
 * key, whose bias is −1e9, gets exactly 0, as e^−1e9 is in float32); the exp is skipped where all four lanes are
 * below it (a causal mask's upper triangle, half of the scores). mxV holds max; t and e are v128 locals.
 */
function maskedExp(l: ExpLocals, mxV: number, t: number, e: number): number[] {
  const kept = [...get(t), ...get(l.floor), ...op.f32x4Ge];
  return [
    ...get(mxV),
    ...op.f32x4Sub,
    ...set(t),
    ...kept,
    ...op.v128AnyTrue,
    ...op.if,
    ...get(t),
    ...get(l.floor),
    ...op.f32x4Pmax,
    ...expV(l),
    ...zeros,
    ...kept,
    ...op.v128Bitselect,
    ...set(e),
    ...op.else,
    ...zeros,
    ...set(e),
    ...op.end,
  ];
}

/**
 * Replaces the n floats at `base` (nb = n · 4 bytes, n4 its SIMD part) by `maskedExp` of each and leaves their sum
 * in the f32 local `sum` (four partial sums in lane order, then the tail). i is the byte index; acc a v128 local.
 */
function expInPlaceSum(
  base: number,
  [i, n4, nb]: [number, number, number],
  [acc, sum]: [number, number],
  exp: { l: ExpLocals; mxV: number; t: number; e: number },
): number[] {
  const term = maskedExp(exp.l, exp.mxV, exp.t, exp.e);
  return [
    ...zeros,
    ...set(acc),
    ...op.i32Const(0),
    ...set(i),
    ...loopTo(i, n4, 16, [
      ...vec(base, i),
      ...term,
      ...storeVec(base, i, get(exp.e)),
      ...get(acc),
      ...get(exp.e),
      ...op.f32x4Add,
      ...set(acc),
    ]),
    ...lanes(acc),
    ...set(sum),
    ...loopTo(i, nb, 4, [
      ...one(base, i),
      ...op.f32x4Splat,
      ...term,
      ...storeOne(base, i, [...get(exp.e), ...op.f32x4ExtractLane(0)]),
      ...get(sum),
      ...get(exp.e),
      ...op.f32x4ExtractLane(0),
      ...op.f32Add,
      ...set(sum),
    ]),
  ];
}

/** The n floats at `base` times 1 / sum (sum an f32 local, overwritten with 1 / sum; v a v128 local). */
function timesReciprocal(base: number, [i, n4, nb]: [number, number, number], sum: number, v: number): number[] {
  return [
    ...op.f32Const(1),
    ...get(sum),
    ...op.f32Div,
    ...tee(sum),
    ...op.f32x4Splat,
    ...set(v),
    ...op.i32Const(0),
    ...set(i),
    ...loopTo(i, n4, 16, storeVec(base, i, [...vec(base, i), ...get(v), ...op.f32x4Mul])),
    ...loopTo(i, nb, 4, storeOne(base, i, [...one(base, i), ...get(sum), ...op.f32Mul])),
  ];
}

/**
 * attentionSoftmax(x, bias, y, rows, S, scale), byte offsets of rows [rows, S] of x, y and bias (one bias row per
 * row): z = x · scale + bias, y = e^(z − max z) · (1 / Σ e^(z − max z)) per row. A term whose exponent is below −87 (a
 * masked key: the bias is −1e9) is exactly 0, as e^−1e9 is in float32.
 */
function attentionSoftmaxBody(): number[] {
  const [x, bias, y, rows, S, scale] = [0, 1, 2, 3, 4, 5];
  const [c, sb, s4] = [6, 7, 8];
  const [mx, sum] = [9, 10];
  const [vmax, acc, mxV, scaleV, t, e] = [11, 12, 13, 14, 15, 16];
  const l = expLocals(17);
  const z = (value: number[]) => [...value, ...get(scaleV), ...op.f32x4Mul];
  return [
    ...expConstants(l),
    ...splat(get(scale), scaleV),
    ...rowBytes(S, sb, s4),
    ...eachRow(rows, [
      // z, stored in y, and its max.
      ...splat(op.f32Const(-Infinity), vmax),
      ...op.i32Const(0),
      ...set(c),
      ...loopTo(c, s4, 16, [
        ...storeVec(y, c, [...z(vec(x, c)), ...vec(bias, c), ...op.f32x4Add, ...tee(t)]),
        ...get(vmax),
        ...get(t),
        ...op.f32x4Pmax,
        ...set(vmax),
      ]),
      ...lanesMax(vmax),
      ...set(mx),
      ...loopTo(c, sb, 4, [
        ...storeOne(y, c, [
          ...one(x, c),
          ...get(scale),
          ...op.f32Mul,
          ...one(bias, c),
          ...op.f32Add,
          ...op.f32x4Splat,
          ...tee(t),
          ...op.f32x4ExtractLane(0),
        ]),
        ...get(mx),
        ...get(t),
        ...op.f32x4ExtractLane(0),
        ...op.f32Max,
        ...set(mx),
      ]),
      ...splat(get(mx), mxV),
      // e^(z − max) in y, and their sum; then times 1 / sum.
      ...expInPlaceSum(y, [c, s4, sb], [acc, sum], { l, mxV, t, e }),
      ...timesReciprocal(y, [c, s4, sb], sum, acc),
    ], [[x, get(sb)], [y, get(sb)], [bias, get(sb)]]),
  ];
}

/** attentionSoftmaxGrad(p, dp, dx, rows, S, scale), byte offsets of rows [rows, S]: dx = p · (dp − Σ dp · p) · scale. */
function attentionSoftmaxGradBody(): number[] {
  const [p, dp, dx, rows, S, scale] = [0, 1, 2, 3, 4, 5];
  const [c, sb, s4] = [6, 7, 8];
  const dot = 9;
  const [acc, dotV, scaleV] = [10, 11, 12];
  return [
    ...splat(get(scale), scaleV),
    ...rowBytes(S, sb, s4),
    ...eachRow(rows, [
      ...rowDot(dp, p, [c, s4, sb], acc, dot),
      ...splat(get(dot), dotV),
      ...op.i32Const(0),
      ...set(c),
      ...loopTo(
        c,
        s4,
        16,
        storeVec(dx, c, [
          ...vec(p, c),
          ...vec(dp, c),
          ...get(dotV),
          ...op.f32x4Sub,
          ...op.f32x4Mul,
          ...get(scaleV),
          ...op.f32x4Mul,
        ]),
      ),
      ...loopTo(
        c,
        sb,
        4,
        storeOne(dx, c, [
          ...one(p, c),
          ...one(dp, c),
          ...get(dot),
          ...op.f32Sub,
          ...op.f32Mul,
          ...get(scale),
          ...op.f32Mul,
        ]),
      ),
    ], [[p, get(sb)], [dp, get(sb)], [dx, get(sb)]]),
  ];
}

/**
 * sigmoidGateGrad(dy, x, s, dx, nb, a, b3) over nb bytes (a multiple of 16), b3 = 3b:
 * dx = dy · (s + ((x · s) · (1 − s)) · z'), z' = (x² · 3b + 1) · a.
 */
function sigmoidGateGradBody(): number[] {
  const [dy, x, s, dx, nb, a, b3] = [0, 1, 2, 3, 4, 5, 6];
  const i = 7;
  const [X, S, aV, bV, oneV] = [8, 9, 10, 11, 12];
  return [
    ...get(a),
    ...op.f32x4Splat,
    ...set(aV),
    ...get(b3),
    ...op.f32x4Splat,
    ...set(bV),
    ...op.f32Const(1),
    ...op.f32x4Splat,
    ...set(oneV),
    ...loopTo(i, nb, 16, [
      ...vec(x, i),
      ...set(X),
      ...vec(s, i),
      ...set(S),
      ...storeVec(dx, i, [
        ...vec(dy, i),
        ...get(S),
        ...get(X),
        ...get(S),
        ...op.f32x4Mul,
        ...get(oneV),
        ...get(S),
        ...op.f32x4Sub,
        ...op.f32x4Mul,
        ...get(X),
        ...get(X),
        ...op.f32x4Mul,
        ...get(bV),
        ...op.f32x4Mul,
        ...get(oneV),
        ...op.f32x4Add,
        ...get(aV),
        ...op.f32x4Mul,
        ...op.f32x4Mul,
        ...op.f32x4Add,
        ...op.f32x4Mul,
      ]),
    ]),
  ];
}

/**
 * attendHead(q, kNew, vNew, k, v, mask, out, probs, S, D, scale), byte offsets: one new token's attention in one
 * head. Its key and value (D floats at kNew and vNew) are copied to row S − 1 of the keys and values [S, D] (rows
 * D floats apart); then with the additive mask [S], probs = softmax(k q · scale + mask) [S] (a scratch) and
 * out = probs v [D]. For decoding, where a head's products are too small for an sgemv call to pay (FFI and
 * typed-array views cost more than their 2·S·D multiply-adds).
 */
function attendHeadBody(): number[] {
  const [q, kNew, vNew, k, v, mask, out, probs, S, D, scale] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  const [s, d, db, d4, sb, s4, row] = [11, 12, 13, 14, 15, 16, 17];
  const [mx, sum, dot] = [18, 19, 20];
  const [acc, mxV, t, e] = [21, 22, 23, 24];
  const l = expLocals(25);
  const lastRow = (
    base: number,
  ) => [...get(base), ...get(S), ...op.i32Const(1), ...op.i32Sub, ...get(db), ...op.i32Mul, ...op.i32Add];
  return [
    ...expConstants(l),
    ...rowBytes(D, db, d4),
    ...rowBytes(S, sb, s4),
    // The new key and value.
    ...lastRow(k),
    ...get(kNew),
    ...get(db),
    ...op.memoryCopy,
    ...lastRow(v),
    ...get(vNew),
    ...get(db),
    ...op.memoryCopy,
    // Scores, and their max.
    ...op.f32Const(-Infinity),
    ...set(mx),
    ...get(k),
    ...set(row),
    ...op.i32Const(0),
    ...set(s),
    ...loopTo(s, sb, 4, [
      ...rowDot(q, row, [d, d4, db], acc, dot),
      ...storeOne(probs, s, [...get(dot), ...get(scale), ...op.f32Mul, ...one(mask, s), ...op.f32Add, ...tee(dot)]),
      ...get(mx),
      ...get(dot),
      ...op.f32Max,
      ...set(mx),
      ...advance(row, get(db)),
    ]),
    ...splat(get(mx), mxV),
    // e^(score − max) and their sum.
    ...expInPlaceSum(probs, [s, s4, sb], [acc, sum], { l, mxV, t, e }),
    // out = Σ e · v, then times 1 / sum.
    ...op.i32Const(0),
    ...set(d),
    ...loopTo(d, d4, 16, storeVec(out, d, zeros)),
    ...loopTo(d, db, 4, storeOne(out, d, op.f32Const(0))),
    ...get(v),
    ...set(row),
    ...op.i32Const(0),
    ...set(s),
    ...loopTo(s, sb, 4, [
      ...one(probs, s),
      ...tee(dot),
      ...op.f32Const(0),
      ...op.f32Ne,
      ...op.if,
      ...splat(get(dot), e),
      ...op.i32Const(0),
      ...set(d),
      ...loopTo(
        d,
        d4,
        16,
        storeVec(out, d, [...vec(out, d), ...get(e), ...vec(row, d), ...op.f32x4Mul, ...op.f32x4Add]),
      ),
      ...loopTo(d, db, 4, storeOne(out, d, [...one(out, d), ...get(dot), ...one(row, d), ...op.f32Mul, ...op.f32Add])),
      ...op.end,
      ...advance(row, get(db)),
    ]),
    ...timesReciprocal(out, [d, d4, db], sum, acc),
  ];
}

/** copyRuns(src, srcStride, dst, dstStride, runs, bytes), byte offsets and strides: `runs` copies of `bytes` bytes. */
function copyRunsBody(): number[] {
  const [src, srcStride, dst, dstStride, runs, bytes] = [0, 1, 2, 3, 4, 5];
  return eachRow(runs, [...get(dst), ...get(src), ...get(bytes), ...op.memoryCopy], [
    [src, get(srcStride)],
    [dst, get(dstStride)],
  ]);
}

/** The kernels' module, compiled once; null where this runtime lacks SIMD. */
const kernelModule = compiledOnce(() =>
  wasmModule(["heap"], [
    {
      name: "layerNorm",
      params: [I32, I32, I32, I32, I32, I32, I32, I32, F32],
      results: [],
      locals: [I32, I32, I32, V128, V128, V128, V128, F32, F32, F32, F32, F32],
      body: layerNormBody(),
    },
    {
      name: "layerNormGrad",
      params: [I32, I32, I32, I32, I32, I32, I32, I32, I32],
      results: [],
      locals: [I32, I32, I32, ...Array(8).fill(V128), ...Array(7).fill(F32)],
      body: layerNormGradBody(),
    },
    {
      name: "sigmoidGate",
      params: [I32, I32, I32, I32, F32, F32],
      results: [],
      locals: [I32, ...Array(6 + 9 + EXP_P.length).fill(V128)],
      body: sigmoidGateBody(),
    },
    {
      name: "rowMaxSumExp",
      params: [I32, I32, I32, I32, I32, I32],
      results: [],
      locals: [I32, I32, I32, F32, F32, F32, ...Array(5 + 9 + EXP_P.length).fill(V128)],
      body: rowMaxSumExpBody(),
    },
    {
      name: "softmaxScaled",
      params: [I32, I32, I32, I32, I32, I32],
      results: [],
      locals: [I32, I32, I32, ...Array(2 + 9 + EXP_P.length).fill(V128)],
      body: softmaxScaledBody(),
    },
    {
      name: "attendHead",
      params: [...Array(10).fill(I32), F32],
      results: [],
      locals: [...Array(7).fill(I32), F32, F32, F32, ...Array(4 + 9 + EXP_P.length).fill(V128)],
      body: attendHeadBody(),
    },
    {
      name: "copyRuns",
      params: [I32, I32, I32, I32, I32, I32],
      results: [],
      locals: [],
      body: copyRunsBody(),
    },
    {
      name: "attentionSoftmax",
      params: [I32, I32, I32, I32, I32, F32],
      results: [],
      locals: [I32, I32, I32, F32, F32, ...Array(6 + 9 + EXP_P.length).fill(V128)],
      body: attentionSoftmaxBody(),
    },
    {
      name: "attentionSoftmaxGrad",
      params: [I32, I32, I32, I32, I32, F32],
      results: [],
      locals: [I32, I32, I32, F32, V128, V128, V128],
      body: attentionSoftmaxGradBody(),
    },
    {
      name: "sigmoidGateGrad",
      params: [I32, I32, I32, I32, I32, F32, F32],
      results: [],
      locals: [I32, ...Array(5).fill(V128)],
      body: sigmoidGateGradBody(),
    },
  ])
);

interface Kernels {
  layerNorm(...args: number[]): void;
  layerNormGrad(...args: number[]): void;
  sigmoidGate(...args: number[]): void;
  sigmoidGateGrad(...args: number[]): void;
  rowMaxSumExp(...args: number[]): void;
  softmaxScaled(...args: number[]): void;
  attentionSoftmax(...args: number[]): void;
  attentionSoftmaxGrad(...args: number[]): void;
  copyRuns(...args: number[]): void;
  attendHead(...args: number[]): void;
}

let instance: { backend: WasmBackendInternals; kernels: Kernels } | undefined;

/** The kernels over this backend's heap (a backend made anew, by a test say, gets a new instance). */
function kernelsOf(backend: WasmBackendInternals): Kernels {
  if (instance?.backend !== backend) {
    const made = new WebAssembly.Instance(kernelModule()!, { env: { heap: backend.wasm.asm.memory } });
    instance = { backend, kernels: made.exports as unknown as Kernels };
  }
  return instance.kernels;
}

function assertFloat32(kernel: string, inputs: tf.NamedTensorInfoMap): void {
  for (const [name, t] of Object.entries(inputs)) {
    if (t!.dtype !== "float32") throw new Error(`Cannot run ${kernel} as '${name}' must be float32: it is ${t!.dtype}`);
  }
}

/** LayerNorm over the last axis of x [..., C]: y and xhat [..., C], rstd [..., 1]. */
function layerNormKernel({ inputs, attrs, backend }: KernelArgs): tf.TensorInfo[] {
  assertFloat32(LAYER_NORM, inputs);
  const wasm = backend as WasmBackendInternals;
  const { x, weight, bias } = inputs as Record<string, tf.TensorInfo>;
  const C = x!.shape[x!.shape.length - 1]!;
  const rows = C === 0 ? 0 : tf.util.sizeFromShape(x!.shape) / C;
  const y = wasm.makeOutput(x!.shape, "float32");
  const xhat = wasm.makeOutput(x!.shape, "float32");
  const rstd = wasm.makeOutput([...x!.shape.slice(0, -1), 1], "float32");
  if (rows === 0) return [y, xhat, rstd];
  const at = (t: tf.TensorInfo) => heapOffset(wasm, t);
  kernelsOf(wasm).layerNorm(at(x!), at(weight!), at(bias!), at(y), at(xhat), at(rstd), rows, C, attrs!.eps as number);
  return [y, xhat, rstd];
}

/** LayerNorm's gradients from dy [..., C] and the forward's xhat and rstd: dx [..., C], dWeight and dBias [C]. */
function layerNormGradKernel({ inputs, backend }: KernelArgs): tf.TensorInfo[] {
  assertFloat32(LAYER_NORM_GRAD, inputs);
  const wasm = backend as WasmBackendInternals;
  const { dy, xhat, rstd, weight } = inputs as Record<string, tf.TensorInfo>;
  const C = dy!.shape[dy!.shape.length - 1]!;
  const rows = C === 0 ? 0 : tf.util.sizeFromShape(dy!.shape) / C;
  const dx = wasm.makeOutput(dy!.shape, "float32");
  const dWeight = wasm.makeOutput([C], "float32");
  const dBias = wasm.makeOutput([C], "float32");
  const at = (t: tf.TensorInfo) => heapOffset(wasm, t);
  // With no rows the kernel still zeroes dWeight and dBias.
  kernelsOf(wasm).layerNormGrad(at(dy!), at(xhat!), at(rstd!), at(weight!), at(dx), at(dWeight), at(dBias), rows, C);
  return [dx, dWeight, dBias];
}

/** σ(z) in float64, for the last n mod 4 values. */
function sigmoid(z: number): number {
  return z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z));
}

/** y = x · σ(z), z = a · x · (1 + b · x²), and s = σ(z), for any shape. */
function sigmoidGateKernel({ inputs, attrs, backend }: KernelArgs): tf.TensorInfo[] {
  assertFloat32(SIGMOID_GATE, inputs);
  const wasm = backend as WasmBackendInternals;
  const x = inputs.x!;
  const [a, b] = [attrs!.a as number, attrs!.b as number];
  const y = wasm.makeOutput(x.shape, "float32");
  const s = wasm.makeOutput(x.shape, "float32");
  const n = tf.util.sizeFromShape(x.shape);
  const simd = n - (n % 4);
  const [xAt, yAt, sAt] = [heapOffset(wasm, x), heapOffset(wasm, y), heapOffset(wasm, s)];
  if (simd > 0) kernelsOf(wasm).sigmoidGate(xAt, yAt, sAt, simd * 4, a, b);
  const heap = new Float32Array(wasm.wasm.asm.memory.buffer);
  for (let k = simd; k < n; k++) {
    const xk = heap[xAt / 4 + k]!;
    const sk = heap[sAt / 4 + k] = sigmoid(a * xk * (1 + b * xk * xk));
    heap[yAt / 4 + k] = xk * sk;
  }
  return [y, s];
}

/** dx = dy · (s + x · s · (1 − s) · z'), z' = a · (1 + 3b · x²), from the forward's s. */
function sigmoidGateGradKernel({ inputs, attrs, backend }: KernelArgs): tf.TensorInfo {
  assertFloat32(SIGMOID_GATE_GRAD, inputs);
  const wasm = backend as WasmBackendInternals;
  const { dy, x, s } = inputs as Record<string, tf.TensorInfo>;
  const [a, b3] = [attrs!.a as number, 3 * (attrs!.b as number)];
  const dx = wasm.makeOutput(x!.shape, "float32");
  const n = tf.util.sizeFromShape(x!.shape);
  const simd = n - (n % 4);
  const [dyAt, xAt, sAt, dxAt] = [
    heapOffset(wasm, dy!),
    heapOffset(wasm, x!),
    heapOffset(wasm, s!),
    heapOffset(wasm, dx),
  ];
  if (simd > 0) kernelsOf(wasm).sigmoidGateGrad(dyAt, xAt, sAt, dxAt, simd * 4, a, b3);
  const heap = new Float32Array(wasm.wasm.asm.memory.buffer);
  for (let k = simd; k < n; k++) {
    const [xk, sk] = [heap[xAt / 4 + k]!, heap[sAt / 4 + k]!];
    heap[dxAt / 4 + k] = heap[dyAt / 4 + k]! * (sk + xk * sk * (1 - sk) * a * (1 + b3 * xk * xk));
  }
  return dx;
}

/**
 * Copies between attention's rows [B*T, P·C] (P parts side by side: q, k and v as c_attn makes them, or one) and
 * per-head blocks [B, H, T, D] of each part: `toHeads` splits, otherwise merges. One wasm call a part, row of the
 * batch and head copies the T runs of D floats (a memory.copy each). Composed, the split was a SplitV and three
 * transposes; wasm's SplitV alone took 33 ms at gpt2-8x512's [1024, 1536] (this: under 1 ms), and its
 * five-dimensional transpose more.
 */
function copyHeads(
  wasm: WasmBackendInternals,
  rows: tf.TensorInfo,
  parts: tf.TensorInfo[],
  [B, T, H, D]: [number, number, number, number],
  toHeads: boolean,
): void {
  const kernels = kernelsOf(wasm);
  const C = H * D;
  const rowBytes = parts.length * C * 4;
  const rowsAt = heapOffset(wasm, rows);
  for (const [p, part] of parts.entries()) {
    const partAt = heapOffset(wasm, part);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        const rowAt = rowsAt + b * T * rowBytes + (p * C + h * D) * 4;
        const headAt = partAt + (b * H + h) * T * D * 4;
        if (toHeads) kernels.copyRuns(rowAt, rowBytes, headAt, D * 4, T, D * 4);
        else kernels.copyRuns(headAt, D * 4, rowAt, rowBytes, T, D * 4);
      }
    }
  }
}

/** rows [B*T, P·C] -> P parts [B, H, T, D] (attrs B, T, H, P). */
function splitHeadsKernel({ inputs, attrs, backend }: KernelArgs): tf.TensorInfo[] {
  assertFloat32(SPLIT_HEADS, inputs);
  const wasm = backend as WasmBackendInternals;
  const rows = inputs.rows!;
  const [B, T, H, P] = [attrs!.B as number, attrs!.T as number, attrs!.H as number, attrs!.P as number];
  const D = rows.shape[1]! / P / H;
  const parts = Array.from({ length: P }, () => wasm.makeOutput([B, H, T, D], "float32"));
  copyHeads(wasm, rows, parts, [B, T, H, D], true);
  return parts;
}

/** Parts [B, H, T, D] (inputs part0, part1, ...) -> rows [B*T, P·C]. */
function mergeHeadsKernel({ inputs, backend }: KernelArgs): tf.TensorInfo {
  assertFloat32(MERGE_HEADS, inputs);
  const wasm = backend as WasmBackendInternals;
  const parts = Object.keys(inputs).map((_, p) => inputs[`part${p}`]!);
  const [B, H, T, D] = parts[0]!.shape as [number, number, number, number];
  const rows = wasm.makeOutput([B * T, parts.length * H * D], "float32");
  copyHeads(wasm, rows, parts, [B, T, H, D], false);
  return rows;
}

/**
 * Log softmax at one target per row: logits [N, V] and int32 targets [N] -> logp [N] (logits[n, target] − lse),
 * lse [N] (log Σ e^logits, kept for the backward pass in place of the softmax) and each row's plain sum [N].
 */
function targetLogSoftmaxKernel({ inputs, backend }: KernelArgs): tf.TensorInfo[] {
  const wasm = backend as WasmBackendInternals;
  const { logits, targets } = inputs as Record<string, tf.TensorInfo>;
  assertFloat32(TARGET_LOG_SOFTMAX, { logits: logits! });
  const [N, V] = logits!.shape as [number, number];
  const [logp, lse, sums] = [0, 1, 2].map(() => wasm.makeOutput([N], "float32"));
  if (N === 0) return [logp!, lse!, sums!];
  const at = (t: tf.TensorInfo) => heapOffset(wasm, t);
  // The row maxima go to lse's memory and the sums of e^(x − max) to logp's, then both are finished here.
  kernelsOf(wasm).rowMaxSumExp(at(logits!), N, V, at(lse!), at(logp!), at(sums!));
  const heap = new Float32Array(wasm.wasm.asm.memory.buffer);
  const target = new Int32Array(wasm.wasm.asm.memory.buffer, at(targets!), N);
  const [x, lseAt, logpAt] = [at(logits!) / 4, at(lse!) / 4, at(logp!) / 4];
  for (let n = 0; n < N; n++) {
    const l = heap[lseAt + n]! + Math.log(heap[logpAt + n]!);
    heap[lseAt + n] = l;
    heap[logpAt + n] = heap[x + n * V + target[n]!]! - l;
  }
  return [logp!, lse!, sums!];
}

/** The gradient of `targetLogSoftmaxKernel`'s logp: dx = dy · (onehot(target) − e^(logits − lse)). */
function targetLogSoftmaxGradKernel({ inputs, backend }: KernelArgs): tf.TensorInfo {
  const wasm = backend as WasmBackendInternals;
  const { dy, logits, lse, targets } = inputs as Record<string, tf.TensorInfo>;
  assertFloat32(TARGET_LOG_SOFTMAX_GRAD, { dy: dy!, logits: logits!, lse: lse! });
  const [N, V] = logits!.shape as [number, number];
  const dx = wasm.makeOutput([N, V], "float32");
  if (N === 0) return dx;
  const at = (t: tf.TensorInfo) => heapOffset(wasm, t);
  kernelsOf(wasm).softmaxScaled(at(logits!), N, V, at(lse!), at(dy!), at(dx));
  const heap = new Float32Array(wasm.wasm.asm.memory.buffer);
  const target = new Int32Array(wasm.wasm.asm.memory.buffer, at(targets!), N);
  const [dxAt, dyAt] = [at(dx) / 4, at(dy!) / 4];
  for (let n = 0; n < N; n++) heap[dxAt + n * V + target[n]!]! += heap[dyAt + n]!;
  return dx;
}

/**
 * Attention's probabilities: softmax(scores · scale + bias) over the last axis of scores [B, H, R, S], with the
 * additive mask bias [B or 1, 1, R, S] shared by the H heads. One pass of the three per row instead of three
 * kernels (a multiply, an add and the softmax) each over the whole [B, H, R, S].
 */
function attentionSoftmaxKernel({ inputs, attrs, backend }: KernelArgs): tf.TensorInfo {
  assertFloat32(ATTENTION_SOFTMAX, inputs);
  const wasm = backend as WasmBackendInternals;
  const { scores, bias } = inputs as Record<string, tf.TensorInfo>;
  const [B, H, R, S] = scores!.shape as [number, number, number, number];
  const [Bb, one, Rb, Sb] = bias!.shape;
  if (
    scores!.shape.length !== 4 || bias!.shape.length !== 4 || (Bb !== B && Bb !== 1) || one !== 1 || Rb !== R ||
    Sb !== S
  ) {
    throw new Error(
      `Cannot run ${ATTENTION_SOFTMAX} as the bias must be [B or 1, 1, R, S] for scores [B, H, R, S]: ` +
        `scores are [${scores!.shape}] and the bias [${bias!.shape}]`,
    );
  }
  const probs = wasm.makeOutput(scores!.shape, "float32");
  const block = R * S * 4;
  if (block === 0) return probs;
  const [x, m, y] = [heapOffset(wasm, scores!), heapOffset(wasm, bias!), heapOffset(wasm, probs)];
  const kernels = kernelsOf(wasm);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const at = (b * H + h) * block;
      kernels.attentionSoftmax(x + at, m + (Bb === 1 ? 0 : b * block), y + at, R, S, attrs!.scale as number);
    }
  }
  return probs;
}

/** The gradient of `attentionSoftmaxKernel`'s scores from its probabilities and theirs: p · (dp − Σ dp · p) · scale. */
function attentionSoftmaxGradKernel({ inputs, attrs, backend }: KernelArgs): tf.TensorInfo {
  assertFloat32(ATTENTION_SOFTMAX_GRAD, inputs);
  const wasm = backend as WasmBackendInternals;
  const { probs, dProbs } = inputs as Record<string, tf.TensorInfo>;
  const S = probs!.shape[probs!.shape.length - 1]!;
  const rows = S === 0 ? 0 : tf.util.sizeFromShape(probs!.shape) / S;
  const dScores = wasm.makeOutput(probs!.shape, "float32");
  if (rows === 0) return dScores;
  const at = (t: tf.TensorInfo) => heapOffset(wasm, t);
  kernelsOf(wasm).attentionSoftmaxGrad(at(probs!), at(dProbs!), at(dScores), rows, S, attrs!.scale as number);
  return dScores;
}

let registered = false;

/** Registers the training kernels on the wasm backend once (not at all where WebAssembly lacks SIMD). */
export function registerTrainKernels(): void {
  if (registered) return;
  registered = true;
  if (kernelModule() === null) return;
  const kernels: [string, (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[]][] = [
    [LAYER_NORM, layerNormKernel],
    [LAYER_NORM_GRAD, layerNormGradKernel],
    [SIGMOID_GATE, sigmoidGateKernel],
    [SIGMOID_GATE_GRAD, sigmoidGateGradKernel],
    [SPLIT_HEADS, splitHeadsKernel],
    [MERGE_HEADS, mergeHeadsKernel],
    [TARGET_LOG_SOFTMAX, targetLogSoftmaxKernel],
    [TARGET_LOG_SOFTMAX_GRAD, targetLogSoftmaxGradKernel],
    [ATTENTION_SOFTMAX, attentionSoftmaxKernel],
    [ATTENTION_SOFTMAX_GRAD, attentionSoftmaxGradKernel],
  ];
  for (const [kernelName, kernelFunc] of kernels) {
    if (!tf.getKernel(kernelName, "wasm")) {
      tf.registerKernel({ kernelName, backendName: "wasm", kernelFunc: kernelFunc as tf.KernelFunc });
    }
  }
}

/**
 * Whether the training kernels run here: the wasm backend is active, they are registered, and TF.js's tape
 * is not recording. They have no gradient: a custom op's forward and backward (where the tape is off) use
 * them, ops that TF.js differentiates itself (a block with LoRA dropout, `tf.grads` over these functions)
 * get the composed ops.
 */
export function trainKernelsApply(): boolean {
  const { gradientDepth, kernelDepth } = tf.engine().state;
  const tapeOn = gradientDepth > 0 && kernelDepth === 0;
  return !tapeOn && tf.getBackend() === "wasm" && tf.getKernel(LAYER_NORM, "wasm") !== undefined;
}

/** LayerNorm over the last axis as one kernel: y, xhat [..., C] and rstd [..., 1]. */
export function fusedLayerNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor, bias: tf.Tensor, eps: number) {
  const [y, xhat, rstd] = tf.engine().runKernel(LAYER_NORM, { x, weight, bias }, { eps }) as tf.Tensor[];
  return { y: y as T, xhat: xhat as T, rstd: rstd! };
}

/** LayerNorm's gradients as one kernel: dx [..., C], dWeight and dBias [C]. */
export function fusedLayerNormBackward(dy: tf.Tensor, xhat: tf.Tensor, rstd: tf.Tensor, weight: tf.Tensor) {
  const [dx, dWeight, dBias] = tf.engine().runKernel(LAYER_NORM_GRAD, { dy, xhat, rstd, weight }) as tf.Tensor[];
  return { dx: dx!, dWeight: dWeight as tf.Tensor1D, dBias: dBias as tf.Tensor1D };
}

/** x · σ(a · x · (1 + b · x²)) as one kernel, with s = σ(…) for the backward (`aux`). */
export function fusedSigmoidGate(x: tf.Tensor, a: number, b: number): { y: tf.Tensor; aux: tf.Tensor } {
  const [y, aux] = tf.engine().runKernel(SIGMOID_GATE, { x }, { a, b }) as tf.Tensor[];
  return { y: y!, aux: aux! };
}

/** dy times the derivative of `fusedSigmoidGate`, from its input x and its s, as one kernel. */
export function fusedSigmoidGateBackward(dy: tf.Tensor, x: tf.Tensor, s: tf.Tensor, a: number, b: number): tf.Tensor {
  return tf.engine().runKernel(SIGMOID_GATE_GRAD, { dy, x, s }, { a, b }) as tf.Tensor;
}

/** Rows [B*T, P·C] of P parts side by side (q, k and v: P = 3) as each part's heads [B, H, T, D], one kernel. */
export function fusedSplitHeads(rows: tf.Tensor2D, B: number, T: number, H: number, P: number): tf.Tensor4D[] {
  return tf.engine().runKernel(SPLIT_HEADS, { rows }, { B, T, H, P }) as tf.Tensor4D[];
}

/** The inverse of `fusedSplitHeads`: parts [B, H, T, D] as rows [B*T, P·C], one kernel. */
export function fusedMergeHeads(parts: tf.Tensor4D[]): tf.Tensor2D {
  const inputs = Object.fromEntries(parts.map((t, p) => [`part${p}`, t]));
  return tf.engine().runKernel(MERGE_HEADS, inputs) as tf.Tensor2D;
}

/**
 * log softmax(logits)[n, targets[n]] [N], the log-sum-exp per row [N] for the backward pass, and the plain sum
 * of each row [N], one kernel.
 */
export function fusedTargetLogSoftmax(
  logits: tf.Tensor2D,
  targets: tf.Tensor1D,
): { logp: tf.Tensor1D; lse: tf.Tensor1D; sums: tf.Tensor1D } {
  const [logp, lse, sums] = tf.engine().runKernel(TARGET_LOG_SOFTMAX, { logits, targets }) as tf.Tensor1D[];
  return { logp: logp!, lse: lse!, sums: sums! };
}

/** dy [N] times the gradient of `fusedTargetLogSoftmax`'s logp: [N, V], one kernel. */
export function fusedTargetLogSoftmaxBackward(
  dy: tf.Tensor1D,
  logits: tf.Tensor2D,
  lse: tf.Tensor1D,
  targets: tf.Tensor1D,
): tf.Tensor2D {
  return tf.engine().runKernel(TARGET_LOG_SOFTMAX_GRAD, { dy, logits, lse, targets }) as tf.Tensor2D;
}

/** softmax(scores · scale + bias) over the last axis, scores [B, H, R, S] and bias [B or 1, 1, R, S], one kernel. */
export function fusedAttentionSoftmax(scores: tf.Tensor4D, bias: tf.Tensor4D, scale: number): tf.Tensor4D {
  return tf.engine().runKernel(ATTENTION_SOFTMAX, { scores, bias }, { scale }) as tf.Tensor4D;
}

/** The scores' gradient of `fusedAttentionSoftmax` from its probabilities and theirs, one kernel. */
export function fusedAttentionSoftmaxBackward(probs: tf.Tensor4D, dProbs: tf.Tensor4D, scale: number): tf.Tensor4D {
  return tf.engine().runKernel(ATTENTION_SOFTMAX_GRAD, { probs, dProbs }, { scale }) as tf.Tensor4D;
}

/**
 * The decoding kernels' attention of one head on this backend's heap: attendHead(q, kNew, vNew, k, v, mask, out,
 * probs, S, D, scale) as `attendHeadBody` says, byte offsets, probs a scratch of S floats. Undefined where the
 * kernels are not registered (no SIMD).
 */
export function heapAttendHead(backend: WasmHeapBackend): ((...args: number[]) => void) | undefined {
  if (tf.getKernel(LAYER_NORM, "wasm") === undefined) return undefined;
  return kernelsOf(backend as WasmBackendInternals).attendHead;
}
