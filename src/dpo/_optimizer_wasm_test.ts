import assert from "node:assert/strict";
import * as tf from "../model/tf.ts";
import { useBackend } from "../model/_test_utils.ts";
import { heapSumOfSquares, WasmAdamW } from "./_optimizer_wasm.ts";

// Sizes with and without a remainder after the four SIMD lanes, and one over many loop iterations.
const SIZES = [1, 3, 4, 7, 1027, 65_537];

function values(n: number, seed: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(seed + i * 0.37) * (1 + (i % 5)));
}

Deno.test("heapSumOfSquares: the float64 sum of squares, lanes and remainder, on the wasm heap only", async () => {
  await useBackend("cpu");
  const onCpu = tf.tensor(values(8, 1));
  assert.equal(heapSumOfSquares([onCpu]), undefined);
  onCpu.dispose();
  await useBackend("wasm");
  const tensors = SIZES.map((n, k) => tf.tensor(values(n, k)));
  let expected = 0;
  for (const t of tensors) for (const x of t.dataSync()) expected += x * x;
  const actual = heapSumOfSquares(tensors)!;
  assert.ok(Math.abs(actual - expected) <= 1e-12 * expected, `${actual} vs ${expected}`);
  tf.dispose(tensors);
});

Deno.test("WasmAdamW: every value updated as AdamW's formula says, the moments kept per parameter", async () => {
  await useBackend("cpu");
  assert.equal(WasmAdamW.create(), undefined);
  await useBackend("wasm");
  const adamw = WasmAdamW.create()!;
  const s = { beta1: 0.9, beta2: 0.99, c1: 0.05, c2: 0.0025, decay: 0.999, stepSize: 0.01, inv: 2, eps: 1e-8 };
  for (const n of SIZES) {
    const p0 = values(n, 2);
    const g = values(n, 3);
    const p = tf.variable(tf.tensor(p0), false);
    const gt = tf.tensor(g);
    const m = new Float64Array(n);
    const v = new Float64Array(n);
    let want = Float64Array.from(p0);
    for (let step = 0; step < 2; step++) {
      adamw.update(`p${n}`, p, gt, s);
      want = want.map((x, i) => {
        m[i] = s.beta1 * m[i]! + s.c1 * g[i]!;
        v[i] = s.beta2 * v[i]! + s.c2 * g[i]! * g[i]!;
        return s.decay * x - s.stepSize * m[i]! / (Math.sqrt(v[i]!) * s.inv + s.eps);
      });
    }
    const got = p.dataSync();
    for (let i = 0; i < n; i++) {
      assert.ok(Math.abs(got[i]! - want[i]!) <= 1e-5, `size ${n} [${i}]: ${got[i]} vs ${want[i]}`);
    }
    const moments = adamw.moments();
    const mGot = moments.get(`exp_avg/p${n}`)!;
    const vGot = moments.get(`exp_avg_sq/p${n}`)!;
    for (let i = 0; i < n; i++) {
      assert.ok(Math.abs(mGot[i]! - m[i]!) <= 1e-6 && Math.abs(vGot[i]! - v[i]!) <= 1e-6, `size ${n} moments [${i}]`);
    }
    tf.dispose([p, gt]);
  }
  assert.throws(
    () => adamw.update("p4", tf.variable(tf.zeros([5])), tf.zeros([5]), s),
    /hold 4 values, the parameter 5/,
  );
  adamw.clear();
  assert.equal(adamw.moments().size, 0);
});
