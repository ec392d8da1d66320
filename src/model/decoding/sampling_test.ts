import assert from "node:assert/strict";
import { argmax, createRng, sampleToken } from "./sampling.ts";

const LOGITS = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.15), Math.log(0.05)]);

function frequencies(params: Parameters<typeof sampleToken>[1], n = 40_000): number[] {
  const rng = createRng(123);
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < n; i++) counts[sampleToken(LOGITS, params, rng)]!++;
  return counts.map((c) => c / n);
}

function assertNear(actual: number[], expected: number[], tol: number): void {
  actual.forEach((a, i) => assert.ok(Math.abs(a - expected[i]!) <= tol, `p[${i}] = ${a}, expected ${expected[i]}`));
}

Deno.test("sampling follows the softmax, and top-k / top-p renormalize what they keep", () => {
  assertNear(frequencies({}), [0.5, 0.3, 0.15, 0.05], 0.01);
  assertNear(frequencies({ topK: 2 }), [0.5 / 0.8, 0.3 / 0.8, 0, 0], 0.01);
  // top-p 0.8 keeps {0.5, 0.3} (mass 0.8 reached), 0.81 also keeps 0.15.
  assertNear(frequencies({ topP: 0.8 }), [0.5 / 0.8, 0.3 / 0.8, 0, 0], 0.01);
  assertNear(frequencies({ topP: 0.81 }), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], 0.01);
  // Temperature 2 flattens: p ∝ sqrt(p).
  const s = [0.5, 0.3, 0.15, 0.05].map(Math.sqrt);
  const z = s.reduce((a, b) => a + b);
  assertNear(frequencies({ temperature: 2 }), s.map((x) => x / z), 0.01);
});

Deno.test("greedy picks the argmax; the generator is seeded and uniform", () => {
  assert.equal(sampleToken(LOGITS, { temperature: 0 }, createRng(1)), 0);
  assert.equal(sampleToken(LOGITS, { topK: 1 }, createRng(1)), 0);
  assert.equal(argmax([1, 3, 3, 2]), 1);
  const a = createRng(42), b = createRng(42), c = createRng(43);
  const xs = Array.from({ length: 5 }, () => a());
  assert.deepEqual(Array.from({ length: 5 }, () => b()), xs);
  assert.notDeepEqual(Array.from({ length: 5 }, () => c()), xs);
  const r = createRng(9);
  let sum = 0;
  for (let i = 0; i < 100_000; i++) {
    const x = r();
    assert.ok(x >= 0 && x < 1);
    sum += x;
  }
  assert.ok(Math.abs(sum / 100_000 - 0.5) < 0.005);
});
