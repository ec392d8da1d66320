/**
 * Matmul throughput on the TF.js wasm backend, with and without native OpenBLAS matmul (square products,
 * GPT-2 small's shapes and small ones; GFLOP/s and the speedup), a decoding step's products for 1-16 rows run each
 * way `enableNativeMatmul` can (`decodeRows`), and the time of a DPO-like training step of a small MLP with and
 * without OpenBLAS. Exits 1 when OpenBLAS cannot be loaded.
 *
 *   deno task bench:matmul [--quick]
 *
 * --quick: shorter timings and no 2048 x 2048 product.
 */
import * as tf from "../src/model/tf.ts";
import "@tensorflow/tfjs-backend-wasm";
import { disableNativeMatmul, enableNativeMatmul, nativeMatmulHelperStarted } from "../src/model/kernels/blas.ts";
import { scriptArgs } from "./_args.ts";

const QUICK = scriptArgs(import.meta.url, { quick: { type: "boolean" } }).values.quick === true;
const MIN_SECONDS = QUICK ? 0.2 : 1;

/** Mean seconds per call of `fn` after one warm-up call, over at least MIN_SECONDS and 2 calls. */
function timeIt(fn: () => void): number {
  fn();
  let calls = 0;
  const start = performance.now();
  let elapsed = 0;
  while (calls < 2 || elapsed < MIN_SECONDS * 1000) {
    fn();
    calls++;
    elapsed = performance.now() - start;
  }
  return elapsed / 1000 / calls;
}

interface MatmulCase {
  label: string;
  aShape: number[];
  bShape: number[];
  transposeB?: boolean;
}

/** GFLOP/s of `tf.matMul` for one case with the kernels currently registered. */
function matmulGflops(c: MatmulCase): number {
  const a = tf.randomUniform(c.aShape, -1, 1);
  const b = tf.randomUniform(c.bShape, -1, 1);
  const m = c.aShape.at(-2)!;
  const k = c.aShape.at(-1)!;
  const n = c.transposeB ? c.bShape.at(-2)! : c.bShape.at(-1)!;
  const batch = c.aShape.slice(0, -2).reduce((x, y) => x * y, 1);
  const seconds = timeIt(() => tf.dispose(tf.matMul(a, b, false, c.transposeB ?? false)));
  tf.dispose([a, b]);
  return (2 * batch * m * n * k) / seconds / 1e9;
}

/** Enables native matmul for the whole process, or exits with the reason. */
function enable(minWork?: number, gemvRows?: number, fewRows?: number, splitRows?: number): void {
  const status = enableNativeMatmul({ minWork, gemvRows, fewRows, splitRows });
  if (!status.enabled) {
    console.error(status.reason);
    Deno.exit(1);
  }
}

function compare(cases: MatmulCase[], minWork?: number): void {
  const rows = cases.map((c) => {
    disableNativeMatmul();
    const wasm = matmulGflops(c);
    enable(minWork);
    const native = matmulGflops(c);
    return {
      shape: c.label,
      "wasm GFLOP/s": wasm.toFixed(1),
      "native GFLOP/s": native.toFixed(1),
      speedup: (native / wasm).toFixed(1),
    };
  });
  console.table(rows);
}

/**
 * The products of one decoding step of gpt2-8x512 (8 blocks of 4 products, then the LM head over 50,257 tokens;
 * 206 MB of weights, more than the caches) for a few rows, in milliseconds a step: with sgemm on the threads
 * its work asks for (gemvRows 0, fewRows 0, splitRows 0), with one sgemv a row (gemvRows 32), with the blocks'
 * products on one thread (fewRows 32: the LM head's weights are over FEW_ROWS_WEIGHTS and keep both), with every
 * product's columns split between this thread and the helper thread (splitRows 32), and with the defaults.
 */
async function decodeRows(): Promise<void> {
  const [C, F, V] = [512, 2048, 50257];
  const weights = Array.from({ length: 8 }, () => [[C, 3 * C], [C, C], [C, F], [F, C]]).flat().map((shape) =>
    tf.randomUniform(shape, -0.1, 0.1)
  );
  const head = tf.randomUniform([V, C], -0.1, 0.1);
  const step = (x: tf.Tensor) => () =>
    tf.tidy(() => {
      for (const w of weights) tf.matMul(tf.slice(x, [0, 0], [-1, w.shape[0]!]), w);
      tf.matMul(tf.slice(x, [0, 0], [-1, C]), head, false, true);
    });
  const variants: [string, number | undefined, number | undefined, number | undefined][] = [
    ["sgemm ms", 0, 0, 0],
    ["sgemv a row ms", 32, 0, 0],
    ["sgemm, blocks on 1 thread ms", 0, 32, 0],
    ["sgemm split ms", 0, 0, 32],
    ["default ms", undefined, undefined, undefined],
  ];
  enable();
  await nativeMatmulHelperStarted();
  const rows = (QUICK ? [1, 4, 8, 12] : [1, 2, 4, 6, 8, 12, 16, 24, 32]).map((m) => {
    const x = tf.randomUniform([m, F], -1, 1);
    const row: Record<string, string | number> = { rows: m };
    for (const [name, gemvRows, fewRows, splitRows] of variants) {
      enable(undefined, gemvRows, fewRows, splitRows);
      row[name] = (timeIt(step(x)) * 1000).toFixed(2);
    }
    tf.dispose(x);
    return row;
  });
  enable();
  tf.dispose([...weights, head]);
  console.table(rows);
}

interface MlpSizes {
  pairs: number;
  tokens: number;
  embed: number;
  hidden: number;
  vocab: number;
}

/**
 * One DPO step of a 2-layer MLP language model (x [N, C] -> relu(x W1) [N, H] -> logits [N, V]):
 * reference log-probs outside the gradient, policy forward on chosen and rejected sequences,
 * sigmoid DPO loss, tf.variableGrads backward and an SGD update.
 */
function dpoStep(s: MlpSizes, params: tf.Variable[], ref: tf.Tensor[], x: tf.Tensor, targets: tf.Tensor): void {
  const beta = 0.1;
  tf.tidy(() => {
    const oneHot = tf.oneHot(targets, s.vocab); // [N, V]
    const seqLogp = (w1: tf.Tensor, w2: tf.Tensor) => {
      const logp = tf.logSoftmax(tf.matMul(tf.relu(tf.matMul(x, w1)), w2)); // [N, V]
      return tf.sum(tf.reshape(tf.sum(tf.mul(logp, oneHot), -1), [2 * s.pairs, s.tokens]), -1); // [2P]
    };
    const reference = seqLogp(ref[0]!, ref[1]!);
    const { grads } = tf.variableGrads(() => {
      const [chosen, rejected] = tf.split(tf.sub(seqLogp(params[0]!, params[1]!), reference), 2); // [P] each
      const z = tf.mul(beta, tf.sub(chosen!, rejected!));
      return tf.mean(tf.softplus(tf.neg(z))); // -log sigmoid(z)
    }, params);
    for (const p of params) p.assign(tf.sub(p, tf.mul(0.01, grads[p.name]!)));
  });
}

function mlpSeconds(s: MlpSizes): number {
  const n = 2 * s.pairs * s.tokens;
  const params = [
    tf.variable(tf.randomNormal([s.embed, s.hidden], 0, 0.02)),
    tf.variable(tf.randomNormal([s.hidden, s.vocab], 0, 0.02)),
  ];
  const ref = params.map((p) => tf.clone(p));
  const x = tf.randomNormal([n, s.embed]);
  const targets = tf.randomUniform([n], 0, s.vocab, "int32");
  const seconds = timeIt(() => dpoStep(s, params, ref, x, targets));
  tf.dispose([...params, ...ref, x, targets]);
  return seconds;
}

async function main(): Promise<void> {
  await tf.setBackend("wasm");
  await tf.ready();
  const status = enableNativeMatmul();
  console.log(status.enabled ? `native matmul: ${status.reason}` : `native matmul unavailable: ${status.reason}`);
  if (!status.enabled) Deno.exit(1);

  console.log("\nSquare matmuls [n, n] x [n, n]");
  const squares = QUICK ? [128, 256, 512, 1024] : [128, 256, 512, 1024, 2048];
  compare(squares.map((n) => ({ label: `${n}`, aShape: [n, n], bShape: [n, n] })));

  console.log("\nGPT-2 small shapes (512 tokens)");
  compare([
    { label: "[512,768] x [768,768]", aShape: [512, 768], bShape: [768, 768] },
    { label: "[512,768] x [768,3072]", aShape: [512, 768], bShape: [768, 3072] },
    { label: "[512,768] x [50257,768]^T", aShape: [512, 768], bShape: [50257, 768], transposeB: true },
    { label: "attention [12,128,64] x [12,128,64]^T", aShape: [12, 128, 64], bShape: [12, 128, 64], transposeB: true },
  ]);

  console.log("\nSmall products, native forced on (minWork 0), to place the threshold");
  compare([
    { label: "8^3", aShape: [8, 8], bShape: [8, 8] },
    { label: "16^3", aShape: [16, 16], bShape: [16, 16] },
    { label: "24^3", aShape: [24, 24], bShape: [24, 24] },
    { label: "32^3", aShape: [32, 32], bShape: [32, 32] },
    { label: "48^3", aShape: [48, 48], bShape: [48, 48] },
    { label: "64^3", aShape: [64, 64], bShape: [64, 64] },
    { label: "[1,768] x [768,768]", aShape: [1, 768], bShape: [768, 768] },
    { label: "[48,32,32] x [48,32,32]", aShape: [48, 32, 32], bShape: [48, 32, 32] },
    { label: "[48,16,64] x [48,64,16]", aShape: [48, 16, 64], bShape: [48, 64, 16] },
  ], 0);
  enable(); // back to the default threshold

  console.log("\nA decoding step's products (gpt2-8x512, weights beyond the caches), by rows and how they run");
  await decodeRows();

  const sizes: MlpSizes = { pairs: 4, tokens: 64, embed: 256, hidden: 1024, vocab: 4096 };
  const n = 2 * sizes.pairs * sizes.tokens;
  const gflop = (2 * n * (sizes.embed * sizes.hidden + sizes.hidden * sizes.vocab) * 4) / 1e9;
  console.log(
    `\nDPO step of an MLP (N=${n} tokens, C=${sizes.embed}, H=${sizes.hidden}, V=${sizes.vocab}; ~${
      gflop.toFixed(1)
    } GFLOP of matmul)`,
  );
  disableNativeMatmul();
  const wasm = mlpSeconds(sizes);
  enable();
  const native = mlpSeconds(sizes);
  console.table([{
    "wasm s/step": wasm.toFixed(3),
    "native s/step": native.toFixed(3),
    speedup: (wasm / native).toFixed(1),
  }]);
}

if (import.meta.main) await main();
