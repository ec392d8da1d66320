import assert from "node:assert/strict";
import { randomValues } from "../_test_utils.ts";
import { startSgemmHelper } from "./_sgemm_helper.ts";

const CBLAS_NO_TRANS = 111;
const CBLAS_TRANS = 112;

const address = (view: Float32Array) => Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(view)));

Deno.test("the sgemm helper runs row-major products at the addresses it is given, in chunks", async () => {
  const helper = startSgemmHelper("libopenblas.so.0");
  assert.ok(helper !== undefined);
  assert.equal(await helper.started, true, "the helper did not start (is libopenblas0-pthread installed?)");
  assert.equal(helper.ready(), true);
  // C = A Bᵀ + C: A [3, 5] in rows of 7 floats (lda 7), B [6, 5], C [3, 6]; as two chunks of 3 columns (B's rows
  // 0-2 and 3-5), which leave C's columns 0-2 and 3-5.
  const [m, n, k, lda, width] = [3, 6, 5, 7, 3];
  const a = randomValues(m * lda, 1);
  const b = randomValues(n * k, 2);
  const c = randomValues(m * n, 3);
  const expected = Array.from(c, (value, index) => {
    const [row, col] = [Math.floor(index / n), index % n];
    let sum = value;
    for (let q = 0; q < k; q++) sum += a[row * lda + q]! * b[col * k + q]!;
    return sum;
  });
  helper.post({
    transA: CBLAS_NO_TRANS,
    transB: CBLAS_TRANS,
    m,
    n: width,
    k,
    a: address(a),
    lda,
    b: address(b),
    ldb: k,
    beta: 1,
    c: address(c),
    ldc: n,
    count: n / width,
    stepB: 4 * width * k,
    stepC: 4 * width,
  });
  helper.wait();
  for (let i = 0; i < c.length; i++) {
    assert.ok(Math.abs(c[i]! - expected[i]!) < 1e-5, `C[${i}]: ${c[i]} vs ${expected[i]}`);
  }
});

Deno.test("a helper over a library that does not open is never ready, and says why", async () => {
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (message: string) => warnings.push(message);
  try {
    const helper = startSgemmHelper("/nonexistent/libopenblas.so");
    assert.ok(helper !== undefined);
    assert.equal(await helper.started, false);
    assert.equal(helper.ready(), false);
  } finally {
    console.warn = warn;
  }
  assert.deepEqual(warnings, [
    "Cannot split few-row products with a helper thread as it could not open /nonexistent/libopenblas.so: they run on OpenBLAS's own threads",
  ]);
});
