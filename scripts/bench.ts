/**
 * `deno task bench`: DPO training steps, forward-only reference scoring and batched generation of
 * GPT-2-shaped models on every TF.js backend available, next to the same work in PyTorch on the same
 * machine in the same run, with where a DPO step spends its time and the fraction of the machine's
 * matmul peak it reaches.
 *
 *   deno task bench [--sizes tiny,gpt2-8x512,gpt2-small] [--backends wasm,wasm-noblas,cpu,webgpu,tensorflow]
 *                   [--seconds 3] [--budget 40] [--no-torch]
 *
 * Sizes: `tiny` (the shipped model's shape, 257-token vocabulary), `gpt2-8x512` (the small size, GPT-2's
 * 50,257-token vocabulary) and `gpt2-small` (GPT-2 small, 124M: the largest whose measurements fit in
 * about a minute here); `gpt2-4x256` on request. Every size and backend runs in its own process, so peak
 * memory (VmHWM) is its own; a backend whose first DPO step takes longer than `--budget` seconds is
 * reported as too slow for that size instead of being measured. PyTorch (Debian's python3-torch,
 * installed with apt-get when missing and possible) runs scripts/bench_torch.py on the same work.
 */
import { scriptArgs } from "./_args.ts";
import { fileURLToPath } from "node:url";
import * as tf from "../src/model/tf.ts";
import {
  DPO_TOKENS,
  ensureTorch,
  type Failure,
  fmt,
  GEN_TOKENS,
  generateWork,
  loadLine,
  machineLine,
  parameterCount,
  peakRssMb,
  randomModel,
  runChild,
  runTorchSettings,
  scoreWork,
  SIZES,
  timed,
  TORCH_SETTINGS,
  WORK,
  workDpoConfig,
  workPairs,
} from "./_bench_common.ts";
import { describeBackend, initBackend } from "../src/model/kernels/backend.ts";
import { DpoTrainer, type PreferencePair } from "../src/dpo/trainer.ts";

const DEFAULT_SIZES = ["tiny", "gpt2-8x512", "gpt2-small"];
/** Backend variants: `wasm` with matmuls in OpenBLAS when it loads, `wasm-noblas` with wasm's own kernels. */
const BACKENDS = ["wasm", "wasm-noblas", "cpu", "webgpu", "tensorflow"] as const;
type Variant = typeof BACKENDS[number];
const PEAK_N = 2048;

/** Where a DPO step's time went, in seconds. */
interface Breakdown {
  matmuls: number;
  attention: number;
  log_softmax: number;
  embedding: number;
  other_kernels: number;
  optimizer: number;
  overhead: number;
  /** Multiply-add FLOPs of the step's matmuls (2·M·N·K each). */
  matmul_flops: number;
  /** Those of the matmuls counted in `matmuls` (attention's are in `attention`). */
  kernel_flops: number;
  /** `matmul_flops` of the same step without prompt sharing: one row per completion, as PyTorch runs it. */
  unshared_matmul_flops: number;
  /** The profiled time of that step, in seconds (the sum of the parts, as `total` in printBreakdown). */
  unshared_s: number;
}

interface Result {
  backend: string;
  dpo?: { step_s: number } | { skipped: string };
  score_s?: number;
  generate_s?: number;
  /** One request alone (batch 1). */
  generate1_s?: number;
  breakdown?: Breakdown;
  peak_rss_mb: number;
  sgemm_gflops?: number;
}

interface TorchResult {
  dpo_step_s: number;
  dpo_phases: { forward_s: number; backward_s: number; update_s: number };
  score_s: number;
  generate_s: number;
  generate1_s: number;
  peak_rss_mb: number;
  sgemm_gflops: number;
  torch: string;
  threads: number;
  /** Which of TORCH_SETTINGS gave each figure. */
  settings?: { dpo: string; score: string; generate: string; generate1: string };
}

/** The better figure of each kind over PyTorch's runs in TORCH_SETTINGS. */
async function runTorch(script: string, config: unknown, timeout: number): Promise<TorchResult | Failure> {
  const runs = await runTorchSettings<TorchResult>(script, config, timeout);
  if ("error" in runs) return runs;
  const best = (key: "dpo_step_s" | "score_s" | "generate_s" | "generate1_s") =>
    runs.reduce((a, b) => (b[1][key] < a[1][key] ? b : a));
  const [dpoName, dpo] = best("dpo_step_s");
  const [scoreName, score] = best("score_s");
  const [generateName, generate] = best("generate_s");
  const [generate1Name, generate1] = best("generate1_s");
  return {
    ...dpo,
    score_s: score.score_s,
    generate_s: generate.generate_s,
    generate1_s: generate1.generate1_s,
    sgemm_gflops: Math.max(...runs.map(([, r]) => r.sgemm_gflops)),
    settings: { dpo: dpoName, score: scoreName, generate: generateName, generate1: generate1Name },
  };
}

async function initVariant(variant: Variant) {
  if (variant === "wasm-noblas") return await initBackend("wasm", { nativeMatmul: false });
  return await initBackend(variant);
}

/** Measures one size on one backend in this process; prints a JSON Result. */
async function worker(sizeName: string, variant: Variant, seconds: number, budget: number): Promise<void> {
  const size = SIZES[sizeName]!;
  let backend: string;
  try {
    backend = describeBackend(await initVariant(variant));
  } catch (error) {
    console.log(JSON.stringify({ error: (error as Error).message } satisfies Failure));
    return;
  }
  const eos = size.vocab_size - 1;
  const policy = randomModel(size, 0, true);
  const reference = randomModel(size, 1000, false);
  const pairs = workPairs(eos);
  const result: Result = { backend, peak_rss_mb: 0 };
  const config = workDpoConfig();
  const trainer = new DpoTrainer({ policy, reference, config, eosId: eos });
  const dpo = await timed(
    async () => {
      const m = await trainer.trainStep(pairs, 1000);
      if (!Number.isFinite(m.loss)) throw new Error(`Cannot benchmark: step ${m.step} has loss ${m.loss}`);
    },
    { seconds, budget, warmup: WORK.dpo_warmup },
  );
  if ("skipped" in dpo) {
    // Too slow for the DPO step: the rest would be too slow as well.
    result.dpo = dpo;
    result.peak_rss_mb = peakRssMb();
    console.log(JSON.stringify(result));
    return;
  }
  result.dpo = { step_s: dpo.fastest };
  // On wasm the update runs outside kernels, so kernel kinds and the update's clock add up.
  if (tf.getBackend() === "wasm") {
    result.breakdown = await profileStep(trainer, pairs, size.vocab_size);
    trainer.sharePrompts = false;
    await trainer.trainStep(pairs, 1000); // the new layout's shapes grow the heap once, as the shared ones did
    const unshared = await profileStep(trainer, pairs, size.vocab_size);
    trainer.sharePrompts = true;
    result.breakdown.unshared_matmul_flops = unshared.matmul_flops;
    result.breakdown.unshared_s = partsTotal(unshared);
  }
  trainer.optimizer.dispose();

  const score = await timed(() => scoreWork(reference, pairs, eos), { seconds, budget });
  if ("fastest" in score) result.score_s = score.fastest;
  const gen = await timed(() => generateWork(policy, eos), { seconds, budget });
  if ("fastest" in gen) result.generate_s = gen.fastest;
  const gen1 = await timed(() => generateWork(policy, eos, 1), { seconds, budget });
  if ("fastest" in gen1) result.generate1_s = gen1.fastest;

  result.peak_rss_mb = peakRssMb();
  if (variant === "wasm") result.sgemm_gflops = sgemmGflops();
  console.log(JSON.stringify(result));
  policy.dispose();
  reference.dispose();
}

/**
 * One more DPO step under `tf.profile`: kernel times by kind, the trainer's own clock for clipping and
 * the optimizer (one host loop on wasm, no kernels), and what is left: building and uploading the batch,
 * reading metrics back, TF.js's dispatch and bookkeeping.
 */
async function profileStep(trainer: DpoTrainer, pairs: PreferencePair[], vocab: number): Promise<Breakdown> {
  const backend = tf.getBackend();
  const start = performance.now();
  const info = await tf.profile(async () => {
    await trainer.trainStep(pairs, 1000);
  });
  const wall = (performance.now() - start) / 1000;
  const out: Breakdown = {
    matmuls: 0,
    attention: 0,
    log_softmax: 0,
    embedding: 0,
    other_kernels: 0,
    optimizer: trainer.lastStepTimes.update_s,
    overhead: 0,
    matmul_flops: 0,
    kernel_flops: 0,
    unshared_matmul_flops: 0,
    unshared_s: 0,
  };
  let kernels = 0;
  for (const k of info.kernels) {
    // Named ops (customGrad blocks, op wrappers) nest real kernels: count only registered kernels.
    if (!tf.getKernel(k.name, backend)) continue;
    const s = (k.kernelTimeMs as number) / 1000;
    const shapes = k.inputShapes.filter((x): x is number[] => Array.isArray(x));
    kernels += s;
    const rank4 = shapes.some((x) => x.length === 4);
    if (k.name === "BatchMatMul" || k.name === "_FusedMatMul") {
      const flops = matmulFlops(shapes[0]!, k.outputShapes[0] as number[]);
      out.matmul_flops += flops;
      if (rank4) out.attention += s;
      else {
        out.matmuls += s;
        out.kernel_flops += flops;
      }
    } else if (/Gather|Segment|Scatter/.test(k.name)) out.embedding += s;
    else if (rank4) out.attention += s;
    else if (shapes.some((x) => x.length === 2 && x[1] === vocab)) out.log_softmax += s; // [rows, V] logits
    else out.other_kernels += s;
  }
  out.overhead = Math.max(0, wall - kernels - out.optimizer);
  return out;
}

/** A profiled step's time: the sum of its parts. */
function partsTotal(b: Breakdown): number {
  return b.matmuls + b.attention + b.log_softmax + b.embedding + b.other_kernels + b.optimizer + b.overhead;
}

/** 2·M·N·K of a (batched) matmul from its first input's and its output's shapes, whatever the transposes. */
function matmulFlops(a: number[], out: number[]): number {
  const prod = (x: number[]) => x.reduce((p, q) => p * q, 1);
  const m = out.at(-2)!;
  const k = prod(a.slice(-2)) / m; // a is [.., M, K] or [.., K, M]
  return 2 * prod(out) * k;
}

/**
 * GFLOP/s of one large sgemm through the backend in use (OpenBLAS on the wasm heap), the best of four half-second
 * windows (on a 2-core VM the first of a burst runs slow). It still reads under the step's own matmul kernels
 * (the output is allocated and read back each time), so the breakdown divides by the best of this, PyTorch's
 * and the step's own matmul kernels.
 */
function sgemmGflops(): number {
  const a = tf.randomUniform([PEAK_N, PEAK_N], -1, 1);
  const b = tf.randomUniform([PEAK_N, PEAK_N], -1, 1);
  tf.matMul(a, b).dispose();
  let best = Infinity;
  for (let window = 0; window < 4; window++) {
    let n = 0;
    const start = performance.now();
    while (n < 2 || performance.now() - start < 500) {
      const c = tf.matMul(a, b);
      c.dataSync();
      c.dispose();
      n++;
    }
    best = Math.min(best, (performance.now() - start) / 1000 / n);
  }
  tf.dispose([a, b]);
  return (2 * PEAK_N ** 3) / best / 1e9;
}

async function main(): Promise<void> {
  const { values } = scriptArgs(import.meta.url, {
    worker: { type: "string" },
    backend: { type: "string", default: "wasm" },
    sizes: { type: "string", default: DEFAULT_SIZES.join(",") },
    backends: { type: "string", default: BACKENDS.join(",") },
    seconds: { type: "string", default: "3" },
    budget: { type: "string", default: "40" },
    "no-torch": { type: "boolean", default: false },
  });
  const seconds = Number(values.seconds);
  const budget = Number(values.budget);
  if (!(seconds > 0) || !(budget > 0)) throw new Error("--seconds and --budget must be numbers > 0");
  const sizes = values.sizes!.split(",");
  for (const s of sizes) if (!SIZES[s]) throw new Error(`Unknown size '${s}' (known: ${Object.keys(SIZES)})`);
  const variants = values.backends!.split(",") as Variant[];
  for (const v of variants) if (!BACKENDS.includes(v)) throw new Error(`Unknown backend '${v}' (known: ${BACKENDS})`);
  if (values.worker) return await worker(values.worker, values.backend as Variant, seconds, budget);

  const torchVersion = values["no-torch"] ? undefined : await ensureTorch();
  const self = fileURLToPath(import.meta.url);
  const torchScript = fileURLToPath(new URL("./bench_torch.py", import.meta.url));
  console.log(`# machine: ${machineLine()}`);
  if (loadLine()) console.log(`# ${loadLine()} at the start`);
  const blasEnv = Object.entries(Deno.env.toObject()).filter(([name]) => name.startsWith("OPENBLAS_"));
  if (blasEnv.length > 0) {
    // OPENBLAS_CORETYPE, say, picks the kernels for every OpenBLAS in the run, ours and PyTorch's alike.
    console.log(`# environment: ${blasEnv.map(([name, value]) => `${name}=${value}`).join(" ")}`);
  }
  console.log(`# TF.js 4.22 backends: ${variants.join(", ")} (each one's kernels and BLAS under its row)`);
  console.log(
    `# PyTorch: ${
      torchVersion
        ? `${torchVersion}, ${navigator.hardwareConcurrency} threads; each figure the better of ${
          Object.keys(TORCH_SETTINGS).join(" and ")
        }`
        : "not available (apt-get install python3-torch)"
    }`,
  );
  console.log(
    `# work: DPO step = ${WORK.pairs} pairs x 2 x (${WORK.prompt_len} prompt + ${WORK.completion_len} completion)` +
      ` = ${DPO_TOKENS} tokens, reference log-probs cached, sigmoid, AdamW, clipping at 1` +
      ` (ours runs each pair as one row, its chosen and rejected after one copy of the prompt: ${
        WORK.pairs * (WORK.prompt_len + 2 * WORK.completion_len)
      } token slots;` +
      ` PyTorch as TRL does, chosen and rejected rows each with the prompt);` +
      ` reference scoring = the same ${DPO_TOKENS} tokens in the same layouts, forward only; generation = batch ${WORK.gen_batch} and batch 1 (b1),` +
      ` ${WORK.gen_prompt_len}-token prompts, ${WORK.gen_tokens} new tokens, greedy, KV cache.` +
      ` The fastest of the calls timed over >= ${seconds} s (at least 2) after a warm-up (${WORK.dpo_warmup} DPO steps,` +
      ` one call otherwise).`,
  );
  const timeout = Math.max(60, 3 * budget + 10 * seconds);
  const notes: string[] = [];
  /** Backends too slow at a smaller size are not tried at larger ones. */
  const tooSlow = new Map<Variant, string>();
  for (const name of sizes) {
    const size = SIZES[name]!;
    const params = parameterCount(size);
    console.log(
      `\n## ${name}: ${size.n_layer} layers x ${size.n_embd}, vocabulary ${fmt(size.vocab_size)}, ${
        (params / 1e6).toFixed(1)
      }M parameters`,
    );
    printRow(["", "DPO pairs/s", "DPO tok/s", "scoring tok/s", "generate tok/s", "generate b1 tok/s", "peak RSS MB"]);
    const ours = new Map<Variant, Result | Failure>();
    for (const v of variants) {
      if (tooSlow.has(v)) {
        printRow([`tfjs ${v}`, `skipped: ${tooSlow.get(v)}`]);
        continue;
      }
      const args = [
        "run",
        "-A",
        self,
        "--worker",
        name,
        "--backend",
        v,
        "--seconds",
        `${seconds}`,
        "--budget",
        `${budget}`,
      ];
      const r = await runChild<Result>(Deno.execPath(), args, {}, timeout);
      ours.set(v, r);
      const slow = "error" in r ? /did not finish/.test(r.error) : r.dpo !== undefined && "skipped" in r.dpo;
      if (slow) tooSlow.set(v, `too slow at ${name}`);
      printRow([`tfjs ${v}`, ...cells(r)]);
      if (!("error" in r)) console.log(`#   ${r.backend}`);
    }
    let theirs: TorchResult | Failure | undefined;
    if (torchVersion) {
      const config = { ...size, ...WORK, min_seconds: seconds };
      theirs = await runTorch(torchScript, config, Math.max(timeout, 300)); // no budget on PyTorch's side
      printRow(["pytorch", ...torchCells(theirs)]);
    }
    const first = ours.get(variants[0]!);
    const primary = first && !("error" in first) ? first : undefined;
    if (theirs && !("error" in theirs) && primary) {
      const ratio = (a: number | undefined, b: number) => a === undefined ? "" : `${(b / a).toFixed(2)}x`;
      const dpo = primary.dpo && "step_s" in primary.dpo ? primary.dpo.step_s : undefined;
      printRow([
        `ratio (${variants[0]})`,
        ratio(dpo, theirs.dpo_step_s),
        ratio(dpo, theirs.dpo_step_s),
        ratio(primary.score_s, theirs.score_s),
        ratio(primary.generate_s, theirs.generate_s),
        ratio(primary.generate1_s, theirs.generate1_s),
        `${(primary.peak_rss_mb / theirs.peak_rss_mb).toFixed(2)}x`,
      ]);
    }
    if (theirs && "settings" in theirs && theirs.settings) {
      const { dpo, score, generate, generate1 } = theirs.settings;
      notes.push(
        `${name} pytorch: DPO with ${dpo}, scoring with ${score}, generation with ${generate}, batch 1 with ${generate1}`,
      );
    }
    printBreakdown(primary, theirs);
    if (loadLine()) console.log(`# ${loadLine()} after ${name}`);
  }
  console.log("\nratio = our throughput / PyTorch's (above 1 is faster); for memory, ours / PyTorch's.");
  for (const n of notes) console.log(`# ${n}`);
}

function cells(res: Result | Failure): string[] {
  if ("error" in res) return [`failed: ${res.error}`];
  if (!res.dpo) return ["(not run)"];
  if ("skipped" in res.dpo) return [`too slow: ${res.dpo.skipped}`];
  const per = (s: number | undefined, n: number) => s === undefined ? "too slow" : fmt(n / s, n / s < 10 ? 1 : 0);
  return [
    (WORK.pairs / res.dpo.step_s).toFixed(2),
    per(res.dpo.step_s, DPO_TOKENS),
    per(res.score_s, DPO_TOKENS),
    per(res.generate_s, GEN_TOKENS),
    per(res.generate1_s, WORK.gen_tokens),
    fmt(res.peak_rss_mb),
  ];
}

function torchCells(r: TorchResult | Failure): string[] {
  if ("error" in r) return [`failed: ${r.error}`];
  return [
    (WORK.pairs / r.dpo_step_s).toFixed(2),
    fmt(DPO_TOKENS / r.dpo_step_s),
    fmt(DPO_TOKENS / r.score_s),
    fmt(GEN_TOKENS / r.generate_s),
    fmt(WORK.gen_tokens / r.generate1_s),
    fmt(r.peak_rss_mb),
  ];
}

/** Where one DPO step went, ours and PyTorch's, and the fraction of the sgemm peak each reached. */
function printBreakdown(ours: Result | undefined, theirs: TorchResult | Failure | undefined): void {
  const b = ours?.breakdown;
  if (!ours || !b || !ours.dpo || !("step_s" in ours.dpo)) return;
  const step = ours.dpo.step_s;
  const total = partsTotal(b);
  const part = (label: string, s: number) => `${label} ${(s * 1000).toFixed(0)} ms (${(100 * s / total).toFixed(0)}%)`;
  console.log(
    `DPO step (profiled, ${(total * 1000).toFixed(0)} ms): ` + [
      part("matmuls", b.matmuls),
      part("attention", b.attention),
      part("log-softmax over the vocabulary", b.log_softmax),
      part("embedding", b.embedding),
      part("other kernels (LayerNorm, GELU, residuals, reshapes)", b.other_kernels),
      part("optimizer (clip + AdamW)", b.optimizer),
      part("data movement and dispatch", b.overhead),
    ].join(", ") +
      `; without prompt sharing (one row per completion) the profiled step took ${(b.unshared_s * 1000).toFixed(0)} ms`,
  );
  const gflop = b.matmul_flops / 1e9;
  const torch = theirs && !("error" in theirs) ? theirs : undefined;
  // One peak for both: the best of the two 2048^3 measurements (the same OpenBLAS runs both) and of what the step's
  // own matmul kernels reached, which on this VM can read above a 2048^3 product measured minutes apart.
  const kernels = b.kernel_flops / 1e9 / b.matmuls;
  const measured = Math.max(ours.sgemm_gflops ?? 0, torch?.sgemm_gflops ?? 0);
  const peak = measured ? Math.max(measured, kernels) : undefined;
  const of = (rate: number) => peak ? ` = ${(100 * rate / peak).toFixed(0)}% of the peak` : "";
  const sources = `ours ${(ours.sgemm_gflops ?? 0).toFixed(0)}, PyTorch's ${(torch?.sgemm_gflops ?? 0).toFixed(0)}` +
    ` and the step's matmul kernels ${kernels.toFixed(0)}`;
  const unshared = b.unshared_matmul_flops / 1e9;
  let line = `matmul work ${gflop.toFixed(1)} GFLOP a step (${
    unshared.toFixed(1)
  } without prompt sharing); sgemm peak ${
    peak ? `${peak.toFixed(0)} GFLOP/s (the best of ${PEAK_N}^3 products, ${sources})` : "not measured"
  }; ours: ${kernels.toFixed(0)} GFLOP/s in matmul kernels${of(kernels)}, ${
    (gflop / step).toFixed(0)
  } GFLOP/s over the whole step${of(gflop / step)} (${(unshared / step).toFixed(0)} GFLOP/s${
    of(unshared / step)
  } counting the work without sharing)`;
  if (torch) {
    const p = torch.dpo_phases;
    line += `; PyTorch (no sharing): ${(unshared / torch.dpo_step_s).toFixed(0)} GFLOP/s over the step${
      of(unshared / torch.dpo_step_s)
    }, forward ${(p.forward_s * 1000).toFixed(0)} ms, backward ${(p.backward_s * 1000).toFixed(0)} ms, optimizer ${
      (p.update_s * 1000).toFixed(0)
    } ms`;
  }
  console.log(line);
}

function printRow(cells: string[]): void {
  const widths = [20, 12, 10, 14, 15, 12];
  if (cells.length === 2) return console.log(`${cells[0]!.padEnd(widths[0]!)} ${cells[1]}`);
  console.log(cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" "));
}

if (import.meta.main) await main();
