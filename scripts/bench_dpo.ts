/**
 * `deno task bench:dpo`: time per DPO optimizer step of GPT-2-shaped models on a TF.js backend, with the
 * reference log-probs cached and recomputed every step, next to the same step in PyTorch in the same run.
 *
 *   deno task bench:dpo [--backend wasm] [--sizes gpt2-4x256,gpt2-8x512,gpt2-small] [--seconds 3] [--no-torch]
 *
 * The step: 4 pairs of a 64-token prompt with a 64-token chosen and a 64-token rejected completion
 * (random ids, the last one the eos), sigmoid loss (β 0.1), AdamW, accumulation 1, max_grad_norm 1;
 * policy and reference have different random weights. Each size runs in its own process (TF.js and
 * PyTorch alike) so that peak memory (VmHWM) is its own; both modes run in it, cached first.
 */
import { fileURLToPath } from "node:url";
import * as tf from "../src/model/tf.ts";
import {
  benchOptions,
  fmt,
  parameterCount,
  peakRssMb,
  printHeader,
  randomModel,
  SIZES,
  TORCH_ENV,
} from "./_bench_common.ts";
import { type BackendChoice, describeBackend, initBackend } from "../src/model/backend.ts";
import { parseDpoConfig } from "../src/dpo/config.ts";
import { DpoTrainer, type PreferencePair } from "../src/dpo/trainer.ts";

/** The work of one step; tokens per step count prompt + completion of both rows of every pair. */
const WORK = { pairs: 4, prompt_len: 64, completion_len: 64, beta: 0.1, learning_rate: 1e-6, min_iters: 2 };
const TOKENS_PER_STEP = WORK.pairs * 2 * (WORK.prompt_len + WORK.completion_len);
const EOS = 50256;

const MODES = ["cached", "uncached"] as const;
type Mode = typeof MODES[number];

interface ModeResult {
  step_s: number;
  /** VmHWM when the mode ends: the uncached figure covers both modes. */
  peak_rss_mb: number;
}

type Result = Record<Mode, ModeResult>;

/** Measures one size in this process, both modes; prints a JSON Result. */
async function worker(sizeName: string, backend: BackendChoice, seconds: number): Promise<void> {
  console.error(describeBackend(await initBackend(backend)));
  const size = SIZES[sizeName]!;
  const policy = randomModel(size, 0, true);
  const reference = randomModel(size, 1000, false);
  const L = WORK.prompt_len + 2 * (WORK.completion_len - 1); // the trainer appends the eos
  const rng = tf.randomUniform([WORK.pairs, L], 0, EOS, "int32", 1);
  const rows = await rng.array() as number[][];
  rng.dispose();
  const split = WORK.prompt_len + WORK.completion_len - 1;
  const pairs: PreferencePair[] = rows.map((r) => ({
    promptIds: r.slice(0, WORK.prompt_len),
    chosenIds: r.slice(WORK.prompt_len, split),
    rejectedIds: r.slice(split),
  }));
  const result = {} as Result;
  for (const mode of MODES) {
    const config = parseDpoConfig({
      beta: WORK.beta,
      learning_rate: WORK.learning_rate,
      loss_type: ["sigmoid"],
      per_device_train_batch_size: WORK.pairs,
      gradient_accumulation_steps: 1,
      max_grad_norm: 1,
      precompute_ref_log_probs: mode === "cached",
    });
    const trainer = new DpoTrainer({ policy, reference, config, eosId: EOS });
    await trainer.trainStep(pairs, 1000); // warm-up: kernels compiled, optimizer state and cache filled
    const tensors = tf.memory().numTensors;
    const scored = trainer.referenceRowsScored;
    let n = 0;
    const start = performance.now();
    while (n < WORK.min_iters || (performance.now() - start) / 1000 < seconds) {
      const m = await trainer.trainStep(pairs, 1000);
      if (!Number.isFinite(m.loss)) throw new Error(`Cannot benchmark: step ${m.step} has loss ${m.loss}`);
      n++;
    }
    const step_s = (performance.now() - start) / 1000 / n;
    const expected = mode === "cached" ? 0 : 2 * WORK.pairs * n;
    if (trainer.referenceRowsScored - scored !== expected) {
      throw new Error(
        `Reference rows scored in ${n} ${mode} steps should be ${expected}: current value is ${
          trainer.referenceRowsScored - scored
        }`,
      );
    }
    const leaked = tf.memory().numTensors - tensors;
    if (leaked !== 0) console.error(`warning: ${mode}: ${leaked} tensors more after ${n} steps`);
    result[mode] = { step_s, peak_rss_mb: peakRssMb() };
    trainer.optimizer.dispose();
  }
  console.log(JSON.stringify(result));
  policy.dispose();
  reference.dispose();
}

/** A child that could not finish: one line on why (the wasm heap is 4 GiB at most). */
interface Failure {
  error: string;
}

async function runChild(cmd: string, args: string[], env?: Record<string, string>): Promise<Result | Failure> {
  const options = { args, env: { NO_COLOR: "1", ...env }, stdout: "piped", stderr: "piped" } as const;
  const out = await new Deno.Command(cmd, options).output();
  const stderr = new TextDecoder().decode(out.stderr);
  for (const line of stderr.split("\n")) if (line.startsWith("warning")) console.error(line);
  if (!out.success) {
    const error = stderr.split("\n").find((l) => /error|Error/.test(l))?.trim() ?? `exit code ${out.code}`;
    const reason = error.replace(/ Build with.*/, "");
    return { error: reason.includes("Aborted()") ? `${reason} (out of wasm memory: 4 GiB at most)` : reason };
  }
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
}

async function main(): Promise<void> {
  const { worker: workerSize, backend, seconds, sizes, torchVersion } = await benchOptions(Deno.args);
  if (workerSize) return await worker(workerSize, backend, seconds);
  const self = fileURLToPath(import.meta.url);
  const torchScript = fileURLToPath(new URL("./bench_dpo_torch.py", import.meta.url));
  printHeader(describeBackend(await initBackend(backend)), torchVersion);
  console.log(
    `# work: ${WORK.pairs} pairs x (${WORK.prompt_len} prompt + ${WORK.completion_len} chosen, ${WORK.prompt_len} prompt + ${WORK.completion_len} rejected) = ${TOKENS_PER_STEP} tokens a step;` +
      ` sigmoid, AdamW, max_grad_norm 1; mean of >= ${WORK.min_iters} steps and >= ${seconds} s after 1 warm-up`,
  );
  console.log("");
  printRow(["size", "params", "", "ref logps", "s/step", "pairs/s", "tokens/s", "peak RSS MB"]);
  const savings: string[] = [];
  for (const name of sizes) {
    const size = SIZES[name]!;
    const params = parameterCount(size);
    const label = `${(params / 1e6).toFixed(1)}M`;
    const args = ["run", "-A", self, "--worker", name, "--backend", backend, "--seconds", String(seconds)];
    const ours = await runChild(Deno.execPath(), args);
    const rows = (impl: string, r: Result | Failure) => {
      if ("error" in r) return printRow([name, label, impl, `failed: ${r.error}`]);
      for (const mode of MODES) {
        const { step_s, peak_rss_mb } = r[mode];
        printRow([
          name,
          label,
          impl,
          mode === "cached" ? "cached" : "every step",
          step_s.toFixed(3),
          (WORK.pairs / step_s).toFixed(2),
          fmt(TOKENS_PER_STEP / step_s),
          fmt(peak_rss_mb),
        ]);
      }
    };
    rows(`tfjs-${backend}`, ours);
    const saving = (r: Result | Failure) =>
      "error" in r ? "(failed)" : `${(r.uncached.step_s / r.cached.step_s).toFixed(2)}x`;
    let line = `${name}: step time with the reference every step / cached: ours ${saving(ours)}`;
    if (torchVersion) {
      const config = { ...size, ...WORK, min_seconds: seconds };
      const theirs = await runChild("/usr/bin/python3", [torchScript, JSON.stringify(config)], TORCH_ENV);
      rows("pytorch", theirs);
      if (!("error" in ours) && !("error" in theirs)) {
        for (const mode of MODES) {
          const ratio = `${(theirs[mode].step_s / ours[mode].step_s).toFixed(2)}x`;
          const memory = `${(ours[mode].peak_rss_mb / theirs[mode].peak_rss_mb).toFixed(2)}x`;
          printRow([name, "", "ratio", mode === "cached" ? "cached" : "every step", "", ratio, ratio, memory]);
        }
      }
      line += `, PyTorch ${saving(theirs)}`;
    }
    savings.push(line);
  }
  console.log("ratio = our throughput / PyTorch's (above 1 is faster); for memory, ours / PyTorch's.");
  console.log("peak RSS of the 'every step' rows covers the whole process (both modes).\n");
  for (const line of savings) console.log(line);
}

function printRow(cells: string[]): void {
  const widths = [12, 7, 11, 11, 8, 8, 9, 12];
  console.log(cells.map((c, i) => i < 4 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join(" "));
}

if (import.meta.main) await main();
