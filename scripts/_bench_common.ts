/**
 * What the benchmark scripts share: model shapes, random models, the DPO/scoring/generation work both
 * sides run, child processes (PyTorch's included), peak memory and formatting.
 */
import type { z } from "zod";
import * as tf from "../src/model/tf.ts";
import { Gpt2ConfigSchema } from "../src/model/arch/gpt2.ts";
import { LlamaConfigSchema } from "../src/model/arch/llama.ts";
import { createModel, initWeights, type ModelConfig, parameterShapes } from "../src/model/arch/registry.ts";
import type { CausalLM } from "../src/model/arch/causal_lm.ts";
import { buildScoringBatch, scoreRows } from "../src/model/logprobs.ts";
import { generate } from "../src/model/decoding/generate.ts";
import { type DpoConfig, parseDpoConfig } from "../src/dpo/config.ts";
import type { PreferencePair } from "../src/dpo/trainer.ts";

/** A GPT-2 shape. */
export interface Size {
  n_layer: number;
  n_embd: number;
  n_head: number;
  vocab_size: number;
  n_positions: number;
}

/** A shape of any architecture: a GPT-2 `Size`, or the fields of a Llama-family `config.json`. */
export type ModelShape = Size | z.input<typeof LlamaConfigSchema>;

/** The sizes benchmarks run: the shipped model's shape, then GPT-2 shapes with GPT-2's 50,257-token vocabulary. */
export const SIZES: Record<string, Size> = {
  "tiny": { n_layer: 4, n_embd: 128, n_head: 4, vocab_size: 257, n_positions: 1024 },
  "gpt2-4x256": { n_layer: 4, n_embd: 256, n_head: 4, vocab_size: 50257, n_positions: 1024 },
  "gpt2-8x512": { n_layer: 8, n_embd: 512, n_head: 8, vocab_size: 50257, n_positions: 1024 },
  "gpt2-small": { n_layer: 12, n_embd: 768, n_head: 12, vocab_size: 50257, n_positions: 1024 },
};

/** The validated config of a shape. */
export function shapeConfig(shape: ModelShape): ModelConfig {
  return "model_type" in shape
    ? LlamaConfigSchema.parse(shape)
    : Gpt2ConfigSchema.parse({ model_type: "gpt2", ...shape });
}

/** A model of `shape` with its architecture's initialization, seeded. */
export function randomModel(shape: ModelShape, seed = 0, trainable = true): CausalLM {
  const config = shapeConfig(shape);
  return createModel(config, initWeights(config, seed), trainable);
}

/** Number of weights of a model of `shape`. */
export function parameterCount(shape: ModelShape): number {
  return [...parameterShapes(shapeConfig(shape)).values()].reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);
}

/** The work, identical on both sides. DPO: 4 pairs of 64 prompt + 64 completion tokens, twice (1,024 tokens a step). */
export const WORK = {
  pairs: 4,
  prompt_len: 64,
  completion_len: 64,
  beta: 0.1,
  learning_rate: 1e-6,
  gen_batch: 8,
  gen_prompt_len: 16,
  gen_tokens: 64,
  /** Untimed DPO steps before the timed ones (see `TimedOptions.warmup`). */
  dpo_warmup: 3,
};
export const DPO_TOKENS = WORK.pairs * 2 * (WORK.prompt_len + WORK.completion_len);
export const GEN_TOKENS = WORK.gen_batch * WORK.gen_tokens;

/** `n` deterministic token ids below `eos`. */
function ids(n: number, seed: number, eos: number): number[] {
  return Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729) % eos);
}

/** The DPO batch of WORK. The trainer appends the eos to each completion: 63 tokens + eos = 64. */
export function workPairs(eos: number): PreferencePair[] {
  return Array.from({ length: WORK.pairs }, (_, b) => ({
    promptIds: ids(WORK.prompt_len, b, eos),
    chosenIds: ids(WORK.completion_len - 1, 100 + b, eos),
    rejectedIds: ids(WORK.completion_len - 1, 200 + b, eos),
  }));
}

/** The DPO step of WORK: sigmoid loss, AdamW, clipping at 1, reference log-probs cached. */
export function workDpoConfig(): DpoConfig {
  return parseDpoConfig({
    beta: WORK.beta,
    learning_rate: WORK.learning_rate,
    loss_type: ["sigmoid"],
    per_device_train_batch_size: WORK.pairs,
    gradient_accumulation_steps: 1,
    max_grad_norm: 1,
    precompute_ref_log_probs: true,
  });
}

/** Forward-only scoring of the DPO step's tokens (what an uncached reference costs). */
export async function scoreWork(model: CausalLM, pairs: PreferencePair[], eos: number): Promise<void> {
  const rows = [...pairs.map((p) => p.chosenIds), ...pairs.map((p) => p.rejectedIds)].map((c, i) => ({
    promptIds: pairs[i % pairs.length]!.promptIds,
    completionIds: c,
  }));
  const batch = buildScoringBatch(rows, { eosId: eos, maxLength: model.contextLength });
  const s = tf.tidy(() => scoreRows(model, batch).logps);
  await s.data();
  s.dispose();
}

/**
 * Greedy generation of WORK: `batch` prompts (`gen_batch` by default; 1 for a single request), `gen_tokens`
 * new tokens each, KV cache.
 */
export async function generateWork(model: CausalLM, eos: number, batch: number = WORK.gen_batch): Promise<void> {
  const codec = { eosTokenId: -1, decode: () => "" };
  const prompts = Array.from({ length: batch }, (_, b) => ids(WORK.gen_prompt_len, 300 + b, eos));
  await generate(model, codec, prompts, { temperature: 0, maxNewTokens: WORK.gen_tokens, stopAtEos: false });
}

/** Options of `timed`. */
export interface TimedOptions {
  /** Keep calling until this many seconds have passed. */
  seconds: number;
  /** Give up after the warm-up call when it took longer than this (seconds). Default: no limit. */
  budget?: number;
  /** Calls to time at least. Default 2. */
  minIters?: number;
  /**
   * Untimed calls first. Default 1. A DPO step takes 3: the first steps grow the allocator's pools (the wasm
   * heap here, PyTorch's allocator there), which a long run pays once.
   */
  warmup?: number;
}

/**
 * Seconds per call after the warm-up calls, the mean and the fastest (on a shared machine other tenants slow some
 * calls, never speed one up), or why not: the first call took longer than `budget` seconds.
 */
export async function timed(
  fn: () => Promise<void>,
  { seconds, budget = Infinity, minIters = 2, warmup = 1 }: TimedOptions,
): Promise<{ seconds: number; fastest: number } | { skipped: string }> {
  const warm = performance.now();
  await fn();
  const warmS = (performance.now() - warm) / 1000;
  if (warmS > budget) return { skipped: `first call took ${warmS.toFixed(0)} s (> --budget ${budget})` };
  for (let i = 1; i < warmup; i++) await fn();
  const times: number[] = [];
  const start = performance.now();
  while (times.length < minIters || (performance.now() - start) / 1000 < seconds) {
    const t0 = performance.now();
    await fn();
    times.push((performance.now() - t0) / 1000);
  }
  return { seconds: times.reduce((a, b) => a + b, 0) / times.length, fastest: Math.min(...times) };
}

/** A child that could not measure: why (the backend did not start, it crashed, it ran out of time). */
export type Failure = { error: string };

/** True when a child's result says why it could not measure. */
export function isFailure<T>(r: T | Failure): r is Failure {
  return typeof r === "object" && r !== null && "error" in r;
}

/** Runs a child that prints its result as JSON on its last stdout line. */
export async function runChild<T>(
  cmd: string,
  args: string[],
  env: Record<string, string>,
  timeoutS: number,
): Promise<T | Failure> {
  const options = {
    args,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeoutS * 1000),
  } as const;
  try {
    const out = await new Deno.Command(cmd, options).output();
    const stderr = new TextDecoder().decode(out.stderr);
    if (options.signal.aborted) return { error: `did not finish in ${timeoutS} s` };
    if (!out.success) {
      const line = stderr.split("\n").find((l) => /error|Error/.test(l))?.trim() ?? `exit code ${out.code}`;
      const reason = line.replace(/ Build with.*/, "");
      // Both are how wasm reports a heap that cannot grow past 4 GiB.
      const heap = /Aborted\(\)|memory access out of bounds/.test(reason);
      return { error: heap ? `${reason} (out of wasm memory: 4 GiB at most)` : reason };
    }
    return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!) as T;
  } catch (error) {
    if ((error as Error).name === "AbortError" || (error as Error).name === "TimeoutError") {
      return { error: `did not finish in ${timeoutS} s` };
    }
    throw error;
  }
}

/**
 * PyTorch runs in both settings and each of its figures is the better one: with OpenBLAS's threads on
 * top of its own OpenMP threads small ops oversubscribe the cores (generation ran 4-5x slower), with
 * one OpenBLAS thread a matmul runs on one core.
 */
export const TORCH_SETTINGS: Record<string, Record<string, string>> = {
  "1 BLAS thread": { OPENBLAS_NUM_THREADS: "1" },
  [`${navigator.hardwareConcurrency} BLAS threads`]: { OPENBLAS_NUM_THREADS: `${navigator.hardwareConcurrency}` },
};

/** A PyTorch script's result in every TORCH_SETTINGS that succeeded (by setting), or why none did. */
export async function runTorchSettings<T>(
  script: string,
  config: unknown,
  timeoutS: number,
): Promise<[string, T][] | Failure> {
  const runs: [string, T][] = [];
  let failure: Failure | undefined;
  for (const [name, env] of Object.entries(TORCH_SETTINGS)) {
    const r = await runChild<T>("/usr/bin/python3", [script, JSON.stringify(config)], env, timeoutS);
    if (isFailure(r)) failure = r;
    else runs.push([name, r]);
  }
  return runs.length > 0 ? runs : failure!;
}

/** The process's peak resident memory (VmHWM), in MB. */
export function peakRssMb(): number {
  const kb = Number(/VmHWM:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))?.[1]);
  return kb / 1024;
}

/** Debian's PyTorch version, if it is installed. */
export async function torchAvailable(): Promise<string | undefined> {
  try {
    const out = await new Deno.Command("/usr/bin/python3", { args: ["-c", "import torch; print(torch.__version__)"] })
      .output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

/** PyTorch's version, after trying to install Debian's package when it is missing (as root, with apt-get). */
export async function ensureTorch(): Promise<string | undefined> {
  const found = await torchAvailable();
  if (found) return found;
  if (Deno.uid?.() !== 0) return undefined;
  console.error("# PyTorch missing: apt-get install -y python3-torch ...");
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  for (const args of [["update"], ["install", "-y", "--no-install-recommends", "python3-torch"]]) {
    const out = await new Deno.Command("apt-get", { args, env, stdout: "null", stderr: "inherit" }).output()
      .catch(() => undefined);
    if (!out?.success) return undefined;
  }
  return await torchAvailable();
}

/** A number with thousands separators. */
export const fmt = (x: number, digits = 0) => x.toLocaleString("en-US", { maximumFractionDigits: digits });

/**
 * The machine in one line, for the top of a benchmark's output: CPU model, the SIMD extensions that matter
 * to the kernels (AVX2, FMA, AVX-512), cores, OS. From /proc/cpuinfo where there is one.
 */
export function machineLine(): string {
  let model = "unknown CPU", flags: string[] = [];
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    model = /^model name\s*:\s*(.+)$/m.exec(info)?.[1]?.trim() ?? model;
    const all = new Set((/^flags\s*:\s*(.+)$/m.exec(info)?.[1] ?? "").split(/\s+/));
    flags = ["avx2", "fma", "avx512f"].filter((f) => all.has(f)).map((f) =>
      f === "avx512f" ? "AVX-512" : f.toUpperCase()
    );
    if (!all.has("avx512f")) flags.push("no AVX-512");
  } catch {
    // Not Linux: the model stays unknown.
  }
  return `${model}${flags.length ? ` (${flags.join(", ")})` : ""}, ${navigator.hardwareConcurrency} cores, ` +
    `${Deno.build.os} ${Deno.build.arch}`;
}

/**
 * The 1, 5 and 15-minute load averages, for the lines beside a benchmark's figures: on a machine shared with
 * other work the figures move with it (PyTorch's threads most of all), so a reader can tell a quiet run from a
 * busy one. Empty where there is no /proc/loadavg.
 */
export function loadLine(): string {
  try {
    const [one, five, fifteen] = Deno.readTextFileSync("/proc/loadavg").split(" ");
    return `load average ${one}, ${five}, ${fifteen} on ${navigator.hardwareConcurrency} cores`;
  } catch {
    return "";
  }
}
