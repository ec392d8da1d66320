import assert from "node:assert/strict";
import * as tf from "../tf.ts";
import "@tensorflow/tfjs-backend-cpu";
import "@tensorflow/tfjs-backend-wasm";
import { randomValues } from "../_test_utils.ts";
import { disableNativeMatmul, enableNativeMatmul, nativeMatmulHelperStarted, nativeMatmulSplits } from "./blas.ts";

/** Enables native matmul for every product size, failing loudly when OpenBLAS is missing. */
function enableOrFail(): void {
  const status = enableNativeMatmul({ minWork: 0 });
  assert.ok(
    status.enabled,
    `OpenBLAS is required for these tests (apt-get install libopenblas0-pthread): ${status.reason}`,
  );
}

interface Result {
  shape: number[];
  values: Float32Array;
}

/** Runs `fn` on `backend` and reads its outputs, asserting that no tensor or wasm buffer leaked. */
async function runOn(backend: "wasm" | "cpu", fn: () => tf.Tensor | tf.Tensor[]): Promise<Result[]> {
  await tf.setBackend(backend);
  const tensorsBefore = tf.memory().numTensors;
  const dataIdsBefore = tf.engine().backend.numDataIds();
  const outputs = tf.tidy(fn);
  const list = Array.isArray(outputs) ? outputs : [outputs];
  const results: Result[] = [];
  for (const t of list) results.push({ shape: t.shape, values: (await t.data()) as Float32Array });
  tf.dispose(list);
  assert.equal(tf.memory().numTensors, tensorsBefore, `tensors leaked on ${backend}`);
  assert.equal(tf.engine().backend.numDataIds(), dataIdsBefore, `backend buffers leaked on ${backend}`);
  return results;
}

function assertClose(actual: Result[], expected: Result[], label: string): void {
  assert.equal(actual.length, expected.length, label);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    assert.deepEqual(a.shape, e.shape, `${label}: shape of output ${i}`);
    let scale = 1;
    for (const v of e.values) scale = Math.max(scale, Math.abs(v));
    const tolerance = 1e-5 * scale;
    for (let j = 0; j < e.values.length; j++) {
      const diff = Math.abs(a.values[j]! - e.values[j]!);
      if (!(diff <= tolerance)) {
        assert.fail(`${label}: output ${i} differs at ${j}: ${a.values[j]} vs ${e.values[j]} (tolerance ${tolerance})`);
      }
    }
  }
}

interface Case {
  label: string;
  aShape: number[];
  bShape: number[];
  transposeA?: boolean;
  transposeB?: boolean;
}

/** The native wasm kernel against the cpu backend's own implementation. */
async function checkMatMul(c: Case, seed: number): Promise<void> {
  const aValues = randomValues(tf.util.sizeFromShape(c.aShape), seed);
  const bValues = randomValues(tf.util.sizeFromShape(c.bShape), seed + 1);
  const fn = () => tf.matMul(tf.tensor(aValues, c.aShape), tf.tensor(bValues, c.bShape), c.transposeA, c.transposeB);
  assertClose(await runOn("wasm", fn), await runOn("cpu", fn), c.label);
}

const CASES: Case[] = [
  { label: "2-D", aShape: [5, 7], bShape: [7, 3] },
  { label: "transposeA", aShape: [7, 5], bShape: [7, 3], transposeA: true },
  { label: "transposeB", aShape: [5, 7], bShape: [3, 7], transposeB: true },
  { label: "both transposed", aShape: [7, 5], bShape: [3, 7], transposeA: true, transposeB: true },
  { label: "batched 3-D", aShape: [4, 6, 9], bShape: [4, 9, 5] },
  { label: "batched 3-D transposeB", aShape: [4, 6, 9], bShape: [4, 5, 9], transposeB: true },
  { label: "batched 4-D", aShape: [2, 3, 6, 9], bShape: [2, 3, 9, 5] },
  {
    label: "batched 4-D both transposed",
    aShape: [2, 3, 9, 6],
    bShape: [2, 3, 5, 9],
    transposeA: true,
    transposeB: true,
  },
  { label: "rank-3 times rank-2", aShape: [3, 10, 8], bShape: [8, 11] },
  { label: "rank-3 times rank-2, transposeA", aShape: [3, 8, 10], bShape: [8, 11], transposeA: true },
  { label: "rank-2 times rank-3", aShape: [10, 8], bShape: [3, 8, 11] },
  { label: "[1,M,K] x [B,K,N]", aShape: [1, 6, 8], bShape: [4, 8, 7] },
  { label: "[B,M,K] x [1,K,N]", aShape: [4, 6, 8], bShape: [1, 8, 7] },
  { label: "odd sizes 37x129x65", aShape: [37, 129], bShape: [129, 65] },
  { label: "odd sizes, both transposed", aShape: [129, 37], bShape: [65, 129], transposeA: true, transposeB: true },
  { label: "300x700x500", aShape: [300, 700], bShape: [700, 500] },
  { label: "one row", aShape: [1, 9], bShape: [9, 5] },
  { label: "one row, transposeB", aShape: [1, 9], bShape: [5, 9], transposeB: true },
  { label: "one row, transposeA", aShape: [9, 1], bShape: [9, 5], transposeA: true },
  {
    label: "batched one row, both transposed",
    aShape: [4, 9, 1],
    bShape: [4, 5, 9],
    transposeA: true,
    transposeB: true,
  },
  // Up to four rows run as one sgemv a row: a decoding step of a few requests.
  { label: "three rows, transposeA", aShape: [9, 3], bShape: [9, 5], transposeA: true },
  { label: "four rows, both transposed", aShape: [9, 4], bShape: [5, 9], transposeA: true, transposeB: true },
  { label: "batched two rows, transposeB", aShape: [3, 2, 9], bShape: [3, 5, 9], transposeB: true },
  { label: "two rows stacked over the batch", aShape: [2, 1, 9], bShape: [9, 5] },
  { label: "zero rows", aShape: [0, 7], bShape: [7, 3] },
  { label: "zero columns", aShape: [5, 7], bShape: [7, 0] },
  { label: "zero inner dimension", aShape: [5, 0], bShape: [0, 3] },
  { label: "zero batch", aShape: [0, 5, 7], bShape: [0, 7, 3] },
];

Deno.test("enableNativeMatmul loads OpenBLAS and replaces the wasm kernels", () => {
  const original = tf.getKernel("BatchMatMul", "wasm");
  enableOrFail();
  assert.notEqual(tf.getKernel("BatchMatMul", "wasm").kernelFunc, original.kernelFunc);
  const again = enableNativeMatmul({ minWork: 0 });
  assert.ok(again.enabled && again.reason.startsWith("already enabled"), again.reason);
});

Deno.test("enableNativeMatmul refuses a gemvRows, fewRows or splitRows that is not a whole number >= 0, and says so", () => {
  for (const name of ["gemvRows", "fewRows", "splitRows"]) {
    for (const value of [-1, 1.5, Number.NaN]) {
      const status = enableNativeMatmul({ [name]: value });
      assert.equal(status.enabled, false);
      assert.match(status.reason, new RegExp(`'${name}' must be an integer >= 0: current value is ${value}`));
    }
  }
});

for (const [index, c] of CASES.entries()) {
  Deno.test(`native matMul matches cpu: ${c.label}`, async () => {
    enableOrFail();
    await checkMatMul(c, 100 + 2 * index);
  });
}

Deno.test("native matMul broadcasts batch dimensions on both sides", async () => {
  enableOrFail();
  // [2, 1, 5, 7] x [3, 7, 4] -> [2, 3, 5, 4]; the backends' own kernels do not broadcast both sides,
  // so the reference is one cpu 2-D product per output matrix.
  const aValues = randomValues(2 * 5 * 7, 7);
  const bValues = randomValues(3 * 7 * 4, 8);
  const actual = await runOn("wasm", () => tf.matMul(tf.tensor(aValues, [2, 1, 5, 7]), tf.tensor(bValues, [3, 7, 4])));
  const expected = await runOn("cpu", () => {
    const a = tf.tensor(aValues, [2, 5, 7]);
    const b = tf.tensor(bValues, [3, 7, 4]);
    const rows: tf.Tensor[] = [];
    for (let i = 0; i < 2; i++) {
      const ai = tf.squeeze(tf.slice(a, [i, 0, 0], [1, 5, 7]), [0]);
      for (let j = 0; j < 3; j++) rows.push(tf.matMul(ai, tf.squeeze(tf.slice(b, [j, 0, 0], [1, 7, 4]), [0])));
    }
    return tf.reshape(tf.stack(rows), [2, 3, 5, 4]);
  });
  assertClose(actual, expected, "two-sided broadcast");
});

Deno.test("gradients of sum(w * matMul(a, b)) match cpu", async () => {
  enableOrFail();
  const shapes: [number[], number[], boolean, boolean][] = [
    [[6, 9], [9, 5], false, false],
    [[9, 6], [9, 5], true, false],
    [[6, 9], [5, 9], false, true],
    [[9, 6], [5, 9], true, true],
    [[3, 6, 9], [3, 9, 5], false, false],
    [[40, 70], [50, 70], false, true],
  ];
  for (const [i, [aShape, bShape, transposeA, transposeB]] of shapes.entries()) {
    const aValues = randomValues(tf.util.sizeFromShape(aShape), 30 + i);
    const bValues = randomValues(tf.util.sizeFromShape(bShape), 40 + i);
    const outShape = [
      ...aShape.slice(0, -2),
      transposeA ? aShape.at(-1)! : aShape.at(-2)!,
      transposeB ? bShape.at(-2)! : bShape.at(-1)!,
    ];
    // Weighted, so that the gradient depends on every element of the product, not only on row sums.
    const weights = randomValues(tf.util.sizeFromShape(outShape), 50 + i);
    const fn = () => {
      const w = tf.tensor(weights, outShape);
      const f = (a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(tf.matMul(a, b, transposeA, transposeB), w));
      return tf.grads(f)([tf.tensor(aValues, aShape), tf.tensor(bValues, bShape)]);
    };
    assertClose(
      await runOn("wasm", fn),
      await runOn("cpu", fn),
      `gradient ${aShape} x ${bShape} (${transposeA}, ${transposeB})`,
    );
  }
});

Deno.test("native fused matMul with bias and relu matches cpu", async () => {
  enableOrFail();
  const configs: {
    bias?: number[];
    activation: "linear" | "relu";
    transposeB: boolean;
    oneRow?: boolean;
    fewRows?: boolean;
  }[] = [
    { activation: "linear", transposeB: false },
    { bias: [11], activation: "linear", transposeB: false },
    { bias: [11], activation: "relu", transposeB: true },
    { bias: [1], activation: "relu", transposeB: false },
    { activation: "relu", transposeB: false },
    // One row: what a decoding step of one sequence multiplies.
    { bias: [11], activation: "linear", transposeB: false, oneRow: true },
    { bias: [11], activation: "relu", transposeB: true, oneRow: true },
    // Three rows: a decoding step of three.
    { bias: [11], activation: "linear", transposeB: true, fewRows: true },
  ];
  for (const [i, config] of configs.entries()) {
    const aShape = config.oneRow ? [1, 1, 17] : config.fewRows ? [3, 1, 17] : [2, 13, 17];
    const aValues = randomValues(aShape.reduce((x, y) => x * y, 1), 60 + i);
    const bValues = randomValues(17 * 11, 70 + i);
    const biasValues = config.bias ? randomValues(config.bias[0]!, 80 + i) : undefined;
    const fn = () =>
      tf.fused.matMul({
        a: tf.tensor(aValues, aShape),
        b: tf.tensor(bValues, config.transposeB ? [11, 17] : [17, 11]),
        transposeB: config.transposeB,
        bias: biasValues ? tf.tensor(biasValues, config.bias) : undefined,
        activation: config.activation,
      });
    assertClose(await runOn("wasm", fn), await runOn("cpu", fn), `fused ${JSON.stringify(config)}`);
  }
});

Deno.test("products of a few rows split their columns with the helper thread and match cpu", async () => {
  // Two OpenBLAS threads whatever this machine has: the split needs them.
  assert.ok(enableNativeMatmul({ minWork: 0, threads: 2 }).enabled);
  try {
    assert.equal(await nativeMatmulHelperStarted(), true, "the sgemm helper thread did not start");
    // 520 columns: the helper's part starts at column 256 (aligned to 16 floats), not at the middle.
    const cases: { rows: number[]; transposeB: boolean; bias: boolean; batches: number; n?: number; k?: number }[] = [
      { rows: [8, 1], transposeB: false, bias: true, batches: 1 },
      { rows: [24, 1], transposeB: true, bias: false, batches: 1 },
      { rows: [3, 1], transposeB: true, bias: true, batches: 1 },
      // An LM head's shape: columns in chunks on both threads, and a last part chunk on this one.
      // The helper takes 4 chunks of 1,024 from column 4,496; this thread 4,496 before them and 408 after.
      { rows: [8, 1], transposeB: true, bias: true, batches: 1, n: 9000, k: 32 },
      // Batched with one weight matrix a batch entry: one split call each.
      { rows: [2, 6], transposeB: false, bias: false, batches: 2 },
    ];
    for (const [i, c] of cases.entries()) {
      const [n, k] = [c.n ?? 520, c.k ?? 512];
      const aShape = [...c.rows, k];
      const bShape = c.batches > 1 ? [c.batches, ...(c.transposeB ? [n, k] : [k, n])] : c.transposeB ? [n, k] : [k, n];
      const aValues = randomValues(tf.util.sizeFromShape(aShape), 200 + i);
      const bValues = randomValues(tf.util.sizeFromShape(bShape), 210 + i);
      const biasValues = randomValues(n, 220 + i);
      const fn = () =>
        tf.fused.matMul({
          a: tf.tensor(aValues, aShape),
          b: tf.tensor(bValues, bShape),
          transposeB: c.transposeB,
          bias: c.bias ? tf.tensor(biasValues, [n]) : undefined,
        });
      const before = nativeMatmulSplits();
      const actual = await runOn("wasm", fn);
      assert.equal(nativeMatmulSplits() - before, c.batches, `split calls for ${JSON.stringify(c)}`);
      assertClose(actual, await runOn("cpu", fn), `split ${JSON.stringify(c)}`);
    }
    // Outside the split's range: 2 rows (sgemv), 25 rows, and weights under SPLIT_WEIGHTS.
    for (const [aShape, bShape] of [[[2, 512], [512, 520]], [[25, 512], [512, 520]], [[8, 64], [64, 64]]]) {
      const before = nativeMatmulSplits();
      const fn = () =>
        tf.matMul(
          tf.tensor(randomValues(aShape![0]! * aShape![1]!, 230), aShape),
          tf.tensor(randomValues(bShape![0]! * bShape![1]!, 231), bShape),
        );
      assertClose(await runOn("wasm", fn), await runOn("cpu", fn), `not split ${aShape} x ${bShape}`);
      assert.equal(nativeMatmulSplits(), before, `${aShape} x ${bShape} was split`);
    }
  } finally {
    enableOrFail();
  }
});

Deno.test("products below minWork use the wasm kernel and still agree", async () => {
  assert.ok(enableNativeMatmul({ minWork: 1e12 }).enabled);
  try {
    await checkMatMul({ label: "below threshold", aShape: [3, 20, 30], bShape: [30, 10] }, 90);
  } finally {
    enableOrFail();
  }
});

Deno.test("non-float32 products are delegated to the wasm kernel", async () => {
  enableOrFail();
  await tf.setBackend("wasm");
  const before = tf.memory().numTensors;
  // The wasm backend's own kernel rejects int32; the native kernel must behave the same way.
  assert.throws(
    () => tf.tidy(() => tf.matMul(tf.tensor2d([[1, 2]], [1, 2], "int32"), tf.tensor2d([[3], [4]], [2, 1], "int32"))),
    /non-float32/,
  );
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("disableNativeMatmul restores the wasm kernel and enable re-installs the native one", async () => {
  enableOrFail();
  const native = tf.getKernel("BatchMatMul", "wasm").kernelFunc;
  disableNativeMatmul();
  const restored = tf.getKernel("BatchMatMul", "wasm").kernelFunc;
  assert.notEqual(restored, native);
  await checkMatMul({ label: "after disable", aShape: [37, 129], bShape: [129, 65] }, 95);
  disableNativeMatmul(); // a second disable is a no-op
  assert.equal(tf.getKernel("BatchMatMul", "wasm").kernelFunc, restored);
  enableOrFail();
  assert.notEqual(tf.getKernel("BatchMatMul", "wasm").kernelFunc, restored);
  await checkMatMul({ label: "after re-enable", aShape: [37, 129], bShape: [129, 65] }, 97);
});
