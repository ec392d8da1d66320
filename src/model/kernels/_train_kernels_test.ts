/** The training kernels give what the composed ops give, on every shape, and leak nothing. */
import assert from "node:assert/strict";
import * as tf from "../tf.ts";
import { assertNoLeak, useBackend } from "../_test_utils.ts";
import {
  activationBackward,
  activationForward,
  attentionSoftmax,
  attentionSoftmaxBackward,
  composedActivationBackward,
  composedActivationForward,
  composedLayerNormBackward,
  composedLayerNormForward,
  composedMergeHeads,
  composedSplitHeads,
  fromHeads,
  layerNorm,
  layerNormBackward,
  layerNormForward,
  mergeHeads,
  splitHeads,
  toHeads,
} from "./_ops.ts";
import { trainKernelsApply } from "./_train_kernels.ts";
import { targetLogProbs, targetLogProbsAndSums } from "../logprobs.ts";

/** Rows of widths that are and are not multiples of 4, under one to three leading dims. */
const SHAPES = [[2, 3, 5], [4, 7], [2, 2, 3, 12], [1, 33, 64], [6, 1], [3, 2, 130]];
const GELUS = ["gelu_new", "gelu_pytorch_tanh", "gelu_fast"] as const;

/** |actual − expected| <= rel · (|expected| + rms(expected)) everywhere, with the shapes equal. */
async function assertNear(actual: tf.Tensor, expected: tf.Tensor, rel: number, what: string): Promise<void> {
  assert.deepEqual(actual.shape, expected.shape, `${what}: shape`);
  const [a, e] = [await actual.data(), Float64Array.from(await expected.data())];
  const rms = Math.sqrt(e.reduce((s, v) => s + v * v, 0) / Math.max(e.length, 1));
  for (let i = 0; i < e.length; i++) {
    const tol = rel * (Math.abs(e[i]!) + rms);
    if (!(Math.abs(a[i]! - e[i]!) <= tol)) {
      throw new Error(`${what}: actual ${a[i]} != expected ${e[i]} at index ${i} (tolerance ${tol})`);
    }
  }
}

/** Deterministic values of a shape: normal with a mean and scale, so that LayerNorm's centering matters. */
function sample(shape: number[], seed: number, mean = 0, scale = 1): tf.Tensor {
  return tf.tidy(() => tf.add(tf.mul(tf.randomNormal(shape, 0, 1, "float32", seed), scale), mean));
}

Deno.test("LayerNorm kernels: y, xhat, rstd and the gradients of the composed ops, no leak", async () => {
  await useBackend("wasm");
  assert.ok(trainKernelsApply(), "the kernels are registered on wasm");
  await assertNoLeak(async () => {
    for (const [k, shape] of SHAPES.entries()) {
      const C = shape.at(-1)!;
      const what = `[${shape}]`;
      const [x, dy] = [sample(shape, k, 3, 2), sample(shape, 100 + k)];
      const [w, b] = [sample([C], 200 + k, 1, 0.5), sample([C], 300 + k)];
      const fused = layerNormForward(x, w, b, 1e-5);
      const composed = tf.tidy(() => composedLayerNormForward(x, w, b, 1e-5));
      await assertNear(fused.y, composed.y, 1e-6, `${what} y`);
      await assertNear(fused.xhat, composed.xhat, 1e-6, `${what} xhat`);
      await assertNear(fused.rstd, composed.rstd, 1e-6, `${what} rstd`);
      const g = layerNormBackward(dy, fused.xhat, fused.rstd, w);
      const ref = tf.tidy(() => composedLayerNormBackward(dy, composed.xhat, composed.rstd, w));
      await assertNear(g.dx, ref.dx, 2e-6, `${what} dx`);
      await assertNear(g.dWeight, ref.dWeight, 2e-6, `${what} dWeight`);
      await assertNear(g.dBias, ref.dBias, 2e-6, `${what} dBias`);
      tf.dispose([x, dy, w, b, fused, composed, g, ref]);
    }
  }, "LayerNorm kernels");
});

Deno.test("LayerNorm op on the kernels: TF.js's own gradients of the composed ops", async () => {
  await useBackend("wasm");
  const [x, dy, w, b] = [sample([2, 5, 9], 1, -1, 3), sample([2, 5, 9], 2), sample([9], 3, 1), sample([9], 4)];
  await assertNoLeak(async () => {
    const loss = (f: (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor) => (...i: tf.Tensor[]) =>
      tf.sum(tf.mul(f(i[0]!, i[1]!, i[2]!), dy));
    const ours = tf.grads(loss((xi, wi, bi) => layerNorm(xi, wi, bi, 1e-5)))([x, w, b]);
    const tape = tf.grads(loss((xi, wi, bi) => composedLayerNormForward(xi, wi, bi, 1e-5).y))([x, w, b]);
    for (const [i, name] of ["dx", "dWeight", "dBias"].entries()) await assertNear(ours[i]!, tape[i]!, 1e-5, name);
    tf.dispose([...ours, ...tape]);
  }, "LayerNorm op");
  tf.dispose([x, dy, w, b]);
});

Deno.test("GELU kernels: y, s and dx of the composed ops, on both tails, no leak", async () => {
  await useBackend("wasm");
  await assertNoLeak(async () => {
    for (const [k, shape] of [...SHAPES, [3], [2, 4, 1027]].entries()) {
      const what = `[${shape}]`;
      // Scale 4 reaches |x| > 10, where sigmoid's argument passes −87 and s underflows.
      const [x, dy] = [sample(shape, k, 0, 4), sample(shape, 100 + k)];
      for (const name of GELUS) {
        const fused = activationForward(name, x);
        const composed = tf.tidy(() => composedActivationForward(name, x));
        await assertNear(fused.y, composed.y, 1e-6, `${name} ${what} y`);
        await assertNear(fused.aux, composed.aux, 1e-6, `${name} ${what} s`);
        // From the same s: where s is near 1, the 1-ulp differences of the two forwards' s become ~1e-6
        // relative ones in 1 - s, in the composed ops' dx as much as in the kernel's.
        const dx = activationBackward(name, dy, x, composed.aux);
        const ref = tf.tidy(() => composedActivationBackward(name, dy, x, composed.aux));
        await assertNear(dx, ref, 1e-6, `${name} ${what} dx`);
        tf.dispose([fused, composed, dx, ref]);
      }
      tf.dispose([x, dy]);
    }
    // Zeros, tiny values, and arguments far past the clamp at −87 either way.
    const x = tf.tensor1d([0, -0, 1e-30, -1e-30, 30, -30, 100, -100, 1e6, -1e6, 0.5, -0.5]);
    const fused = activationForward("gelu_new", x);
    const composed = tf.tidy(() => composedActivationForward("gelu_new", x));
    await assertNear(fused.y, composed.y, 1e-6, "edges y");
    await assertNear(fused.aux, composed.aux, 1e-6, "edges s");
    tf.dispose([x, fused, composed]);
  }, "GELU kernels");
});

Deno.test("under TF.js's tape the composed ops run, and differentiate", async () => {
  await useBackend("wasm");
  const [x, dy, w, b] = [sample([3, 6], 1, 0, 2), sample([3, 6], 2), sample([6], 3, 1), sample([6], 4)];
  await assertNoLeak(async () => {
    const [dGelu] = tf.grads((xi: tf.Tensor) => tf.sum(tf.mul(activationForward("gelu_new", xi).y, dy)))([x]);
    const expected = tf.tidy(() => activationBackward("gelu_new", dy, x, activationForward("gelu_new", x).aux));
    await assertNear(dGelu!, expected, 1e-5, "GELU dx on the tape");
    const [dLn] = tf.grads((xi: tf.Tensor) => tf.sum(tf.mul(layerNormForward(xi, w, b, 1e-5).y, dy)))([x]);
    const dx = tf.tidy(() => {
      const f = layerNormForward(x, w, b, 1e-5);
      return layerNormBackward(dy, f.xhat, f.rstd, w).dx;
    });
    await assertNear(dLn!, dx, 1e-5, "LayerNorm dx on the tape");
    tf.dispose([dGelu, expected, dLn, dx]);
  }, "tape");
  tf.dispose([x, dy, w, b]);
});

Deno.test("off wasm the composed ops run", async () => {
  await useBackend("cpu");
  try {
    assert.equal(trainKernelsApply(), false);
    await assertNoLeak(async () => {
      const [x, w, b] = [sample([2, 6], 1), tf.ones([6]), tf.zeros([6])];
      const ours = tf.tidy(() => layerNormForward(x, w, b, 1e-5));
      const composed = tf.tidy(() => composedLayerNormForward(x, w, b, 1e-5));
      await assertNear(ours.y, composed.y, 0, "cpu y");
      tf.dispose([x, w, b, ours, composed]);
    }, "cpu");
  } finally {
    await useBackend("wasm");
  }
});

Deno.test("head split and merge kernels: the composed ops' values exactly, and merge undoes split, no leak", async () => {
  await useBackend("wasm");
  assert.ok(trainKernelsApply(), "the kernels are registered on wasm");
  await assertNoLeak(async () => {
    // [B, T, H, D]: one row, odd sizes, a head of one float, GPT-2-like.
    const shapes: [number, number, number, number][] = [[1, 1, 1, 1], [2, 3, 5, 7], [3, 4, 1, 16], [2, 9, 12, 64]];
    for (const [k, [B, T, H, D]] of shapes.entries()) {
      // q, k and v side by side (splitHeads), and one part (toHeads, attention's output).
      for (const P of [3, 1]) {
        const what = `B ${B} T ${T} H ${H} D ${D}, ${P} part(s)`;
        const rows = sample([B * T, P * H * D], 400 + k) as tf.Tensor2D;
        const fused = P === 3 ? splitHeads(rows, B, T, H) : [toHeads(rows, B, T, H)];
        const composed = tf.tidy(() => composedSplitHeads(rows, B, T, H, P));
        for (const [i, part] of fused.entries()) {
          assert.deepEqual(part.shape, [B, H, T, D], `${what}: shape of part ${i}`);
          assert.deepEqual(await part.data(), await composed[i]!.data(), `${what}: part ${i}`);
        }
        const merged = P === 3 ? mergeHeads(fused[0]!, fused[1]!, fused[2]!) : fromHeads(fused[0]!);
        assert.deepEqual(merged.shape, rows.shape, `${what}: merged shape`);
        assert.deepEqual(await merged.data(), await rows.data(), `${what}: merge undoes split`);
        const reference = tf.tidy(() => composedMergeHeads(fused));
        assert.deepEqual(await merged.data(), await reference.data(), `${what}: merge`);
        tf.dispose([rows, ...fused, ...composed, merged, reference]);
      }
    }
  });
});

Deno.test("log softmax at the targets: values, row sums and gradient as float64 computes them, on wasm's kernels and the composed ops, no leak", async () => {
  for (const backend of ["wasm", "cpu"] as const) {
    await useBackend(backend);
    try {
      assert.equal(trainKernelsApply(), backend === "wasm");
      await assertNoLeak(() => checkTargetLogSoftmax(backend), backend);
    } finally {
      await useBackend("wasm");
    }
  }
});

async function checkTargetLogSoftmax(backend: string): Promise<void> {
  // Widths with and without a remainder after four lanes; rows far apart in scale, one with a -100 spread.
  const shapes: [number, number][] = [[1, 1], [2, 3], [3, 4], [4, 7], [5, 257], [3, 1001]];
  for (const [k, [N, V]] of shapes.entries()) {
    const what = `${backend} [${N}, ${V}]`;
    const logits = tf.tidy(() =>
      tf.add(
        tf.mul(
          tf.randomNormal([N, V], 0, 1, "float32", 500 + k),
          tf.tensor2d(Array.from({ length: N }, (_, n) => [[1, 8, 0.1, 30, 3][n % 5]!])),
        ),
        0.5,
      )
    ) as tf.Tensor2D;
    const targets = Int32Array.from({ length: N }, (_, n) => (n * 7 + k) % V);
    const dy = tf.tensor1d(Array.from({ length: N }, (_, n) => (n % 2 ? -1 : 1) * (0.5 + n)));
    const x = Float64Array.from(await logits.data());
    const g = Float64Array.from(await dy.data());
    const expected: number[] = [];
    const expectedSums: number[] = [];
    const expectedGrad = new Float64Array(N * V);
    for (let n = 0; n < N; n++) {
      const row = x.subarray(n * V, (n + 1) * V);
      const max = Math.max(...row);
      const lse = max + Math.log(row.reduce((acc, v) => acc + Math.exp(v - max), 0));
      expected.push(row[targets[n]!]! - lse);
      expectedSums.push(row.reduce((acc, v) => acc + v, 0));
      for (let v = 0; v < V; v++) {
        expectedGrad[n * V + v] = g[n]! * ((v === targets[n] ? 1 : 0) - Math.exp(row[v]! - lse));
      }
    }
    const value = tf.tidy(() => targetLogProbs(logits, targets));
    const both = tf.tidy(() => targetLogProbsAndSums(logits, targets));
    const [want, wantSums] = [tf.tensor1d(expected), tf.tensor1d(expectedSums)];
    const wantGrad = tf.tensor2d(Array.from(expectedGrad), [N, V]);
    await assertNear(value, want, 1e-6, `${what} log-probs`);
    await assertNear(both.logp, want, 1e-6, `${what} log-probs with the sums`);
    await assertNear(both.sums, wantSums, 1e-6, `${what} row sums`);
    const grad = tf.grad((l: tf.Tensor) => tf.sum(tf.mul(targetLogProbs(l as tf.Tensor2D, targets), dy)))(logits);
    await assertNear(grad, wantGrad, 2e-6, `${what} gradient`);
    // The sums are a metric that no gradient flows through, even where the objective includes them.
    const gradBoth = tf.grad((l: tf.Tensor) => {
      const out = targetLogProbsAndSums(l as tf.Tensor2D, targets);
      return tf.add(tf.sum(tf.mul(out.logp, dy)), tf.sum(out.sums));
    })(logits);
    await assertNear(gradBoth, wantGrad, 2e-6, `${what} gradient with the sums`);
    tf.dispose([logits, dy, value, both.logp, both.sums, grad, gradBoth, want, wantSums, wantGrad]);
  }
}

Deno.test("attention softmax kernels: probabilities and scores' gradient as float64 computes them, masked keys exactly 0, no leak", async () => {
  await useBackend("wasm");
  assert.ok(trainKernelsApply(), "the kernels are registered on wasm");
  await assertNoLeak(async () => {
    // [B, H, R, S] and the bias's batch: key counts with and without a remainder after four lanes, a bias shared
    // by the batch, a single key.
    const shapes: [number, number, number, number, number][] = [
      [1, 1, 1, 1, 1],
      [2, 3, 4, 4, 2],
      [2, 2, 5, 7, 1],
      [3, 4, 16, 19, 3],
      [1, 2, 33, 130, 1],
    ];
    for (const [k, [B, H, R, S, Bb]] of shapes.entries()) {
      const what = `[${B}, ${H}, ${R}, ${S}], bias batch ${Bb}`;
      const scale = 0.125 * (k + 1);
      const scores = tf.tidy(() => tf.mul(tf.randomNormal([B, H, R, S], 0, 1, "float32", 600 + k), 4)) as tf.Tensor4D;
      // Causal-style masks at -1e9 (the models' value), shifted per batch row; row r of the last batch row fully masked.
      const maskAt = (b: number, r: number, s: number) => s > r + b || (b === Bb - 1 && r === R - 1 && R > 1);
      const biasValues = Array.from({ length: Bb * R * S }, (_, i) => {
        const [b, r, s] = [Math.floor(i / (R * S)), Math.floor(i / S) % R, i % S];
        return maskAt(b, r, s) ? -1e9 : 0;
      });
      const bias = tf.tensor4d(biasValues, [Bb, 1, R, S]);
      const dProbs = tf.tidy(() => tf.randomNormal([B, H, R, S], 0, 1, "float32", 700 + k)) as tf.Tensor4D;
      const x = Float64Array.from(await scores.data());
      const g = Float64Array.from(await dProbs.data());
      const [want, wantGrad, gradTol] = [
        new Float64Array(x.length),
        new Float64Array(x.length),
        new Float64Array(x.length),
      ];
      for (let row = 0; row < B * H * R; row++) {
        const [b, r] = [Math.floor(row / (H * R)), row % R];
        // z as float32 adds it: a fully masked row's scores all round to -1e9, and its probabilities are uniform.
        const z = Array.from({ length: S }, (_, s) => {
          const bias = biasValues[((Bb === 1 ? 0 : b) * R + r) * S + s]!;
          return Math.fround(Math.fround(x[row * S + s]! * scale) + bias);
        });
        const max = Math.max(...z);
        const total = z.reduce((acc, v) => acc + Math.exp(v - max), 0);
        const p = z.map((v) => Math.exp(v - max) / total);
        const dot = p.reduce((acc, v, s) => acc + v * g[row * S + s]!, 0);
        // float32's rounding of dp − dot: of dp, and of a dot product of S terms.
        const dotError = Math.sqrt(S) * p.reduce((acc, v, s) => acc + v * Math.abs(g[row * S + s]!), 0);
        p.forEach((v, s) => {
          want[row * S + s] = v;
          wantGrad[row * S + s] = v * (g[row * S + s]! - dot) * scale;
          gradTol[row * S + s] = 1e-6 * v * (Math.abs(g[row * S + s]!) + dotError) * scale;
        });
      }
      const probs = attentionSoftmax(scores, bias, scale);
      const expected = tf.tensor4d(Array.from(want), [B, H, R, S]);
      await assertNear(probs, expected, 1e-6, `${what} probabilities`);
      const p = await probs.data();
      want.forEach((v, i) => assert.ok(v !== 0 || p[i] === 0, `${what}: a masked key's probability is exactly 0`));
      const dScores = attentionSoftmaxBackward(probs, dProbs, scale);
      const grad = await dScores.data();
      wantGrad.forEach((v, i) => {
        if (!(Math.abs(grad[i]! - v) <= gradTol[i]!)) {
          throw new Error(
            `${what} gradient: actual ${grad[i]} != expected ${v} at index ${i} (tolerance ${gradTol[i]})`,
          );
        }
      });
      tf.dispose([scores, bias, dProbs, probs, expected, dScores]);
    }
    const scores = tf.zeros([2, 1, 3, 4]) as tf.Tensor4D;
    const bias = tf.zeros([2, 1, 3, 5]) as tf.Tensor4D;
    assert.throws(() => attentionSoftmax(scores, bias, 1), /bias must be \[B or 1, 1, R, S\].*\[2,1,3,5\]/);
    tf.dispose([scores, bias]);
  });
});
