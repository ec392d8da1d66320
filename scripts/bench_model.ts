/**
 * `deno task bench`: forward, forward+backward and generation throughput of GPT-2-shaped models
 * on a TF.js backend, next to the same work in PyTorch on the same machine in the same run.
 *
 *   deno task bench [--backend wasm] [--sizes gpt2-4x256,gpt2-8x512,gpt2-small] [--seconds 3] [--no-torch]
 *
 * Each size runs in its own process (TF.js and PyTorch alike) so that peak memory (VmHWM) is its own.
 * Also prints generation with the KV cache against recomputing the prefix, for 256 new tokens.
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
import { buildScoringBatch, sequenceLogProbs } from "../src/model/logprobs.ts";
import { generate } from "../src/model/generate.ts";

/** The work: 4 sequences of 64 prompt + 64 completion tokens; generation of 64 tokens after 16. */
const WORK = { batch: 4, seq_len: 128, prompt_len: 64, gen_prompt_len: 16, gen_tokens: 64 };

interface Result {
  forward_s: number;
  train_s: number;
  generate_s: number;
  peak_rss_mb: number;
}

async function timed(fn: () => Promise<void>, minSeconds: number, minIters = 2): Promise<number> {
  await fn(); // warm-up: kernels compiled, memory allocated
  let n = 0;
  const start = performance.now();
  while (n < minIters || (performance.now() - start) / 1000 < minSeconds) {
    await fn();
    n++;
  }
  return (performance.now() - start) / 1000 / n;
}

/** Measures one size in this process; prints a JSON Result. */
async function worker(sizeName: string, backend: BackendChoice, seconds: number): Promise<void> {
  const report = await initBackend(backend);
  console.error(describeBackend(report));
  const size = SIZES[sizeName]!;
  const model = randomModel(size);
  const rng = tf.randomUniform([WORK.batch, WORK.seq_len], 0, size.vocab_size, "int32", 1);
  const rows = await rng.array() as number[][];
  rng.dispose();
  const pairs = rows.map((r) => ({ promptIds: r.slice(0, WORK.prompt_len), completionIds: r.slice(WORK.prompt_len) }));
  // The scored sequence is prompt + completion + eos: one token longer than PyTorch's; counted below.
  const batch = buildScoringBatch(pairs.map((p) => ({ ...p, completionIds: p.completionIds.slice(0, -1) })), {
    eosId: rows[0]![WORK.seq_len - 1]!,
    maxLength: size.n_positions,
  });
  const forward_s = await timed(async () => {
    const s = tf.tidy(() => sequenceLogProbs(model, batch));
    await s.data();
    s.dispose();
  }, seconds);
  const vars = model.trainableVariables();
  const train_s = await timed(async () => {
    const { value, grads } = tf.variableGrads(() => tf.sum(sequenceLogProbs(model, batch)) as tf.Scalar, vars);
    await value.data();
    tf.dispose([value, ...Object.values(grads)]);
  }, seconds);
  const codec = { eosTokenId: -1, decode: () => "" };
  const prompts = rows.map((r) => r.slice(0, WORK.gen_prompt_len));
  const generate_s = await timed(
    async () => {
      await generate(model, codec, prompts, { temperature: 0, maxNewTokens: WORK.gen_tokens, stopAtEos: false });
    },
    seconds,
    1,
  );
  const result: Result = { forward_s, train_s, generate_s, peak_rss_mb: peakRssMb() };
  console.log(JSON.stringify(result));
  model.dispose();
}

/** Cached against recomputed generation of 256 tokens after 16, on the smallest size. */
async function cacheSpeedup(backend: BackendChoice, batch: number): Promise<{ cached: number; recomputed: number }> {
  await initBackend(backend);
  const model = randomModel(SIZES["gpt2-4x256"]!);
  const codec = { eosTokenId: -1, decode: () => "" };
  const prompts = Array.from({ length: batch }, (_, b) => Array.from({ length: 16 }, (_, i) => 100 + 16 * b + i));
  const run = async (useCache: boolean) => {
    const start = performance.now();
    await generate(model, codec, prompts, { temperature: 0, maxNewTokens: 256, stopAtEos: false, useCache });
    return (batch * 256) / ((performance.now() - start) / 1000);
  };
  await run(true);
  const cached = await run(true);
  const recomputed = await run(false);
  model.dispose();
  return { cached, recomputed };
}

async function runChild(cmd: string, args: string[], env?: Record<string, string>): Promise<Result> {
  const out = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
  const stdout = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    throw new Error(`${cmd} ${args.slice(0, 3).join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  return JSON.parse(stdout.split("\n").pop()!);
}

async function main(): Promise<void> {
  const { worker: workerSize, backend, seconds, sizes, torchVersion } = await benchOptions(Deno.args);
  if (workerSize) return await worker(workerSize, backend, seconds);
  const self = fileURLToPath(import.meta.url);
  const torchScript = fileURLToPath(new URL("./bench_torch.py", import.meta.url));
  printHeader(describeBackend(await initBackend(backend)), torchVersion);
  console.log(
    `# work: batch ${WORK.batch} x ${WORK.seq_len} tokens (${WORK.prompt_len} prompt + ${
      WORK.seq_len - WORK.prompt_len
    } scored);` +
      ` generation: batch ${WORK.batch}, ${WORK.gen_prompt_len}-token prompts, ${WORK.gen_tokens} new tokens, greedy`,
  );
  console.log("");
  const header = ["size", "params", "", "forward tok/s", "fwd+bwd tok/s", "generate tok/s", "peak RSS MB"];
  const lines: string[][] = [header];
  for (const name of sizes) {
    const size = SIZES[name]!;
    const params = parameterCount(size);
    const ours = await runChild(Deno.execPath(), [
      "run",
      "-A",
      self,
      "--worker",
      name,
      "--backend",
      backend,
      "--seconds",
      String(seconds),
    ]);
    const tokens = WORK.batch * WORK.seq_len;
    const gen = WORK.batch * WORK.gen_tokens;
    const row = (label: string, r: Result) => [
      name,
      `${(params / 1e6).toFixed(1)}M`,
      label,
      fmt(tokens / r.forward_s),
      fmt(tokens / r.train_s),
      fmt(gen / r.generate_s),
      fmt(r.peak_rss_mb),
    ];
    lines.push(row(`tfjs-${backend}`, ours));
    if (torchVersion) {
      const config = { ...size, ...WORK, min_seconds: seconds };
      const theirs = await runChild("/usr/bin/python3", [torchScript, JSON.stringify(config)], TORCH_ENV);
      lines.push(row("pytorch", theirs));
      lines.push([
        name,
        "",
        "ratio",
        `${(theirs.forward_s / ours.forward_s).toFixed(2)}x`,
        `${(theirs.train_s / ours.train_s).toFixed(2)}x`,
        `${(theirs.generate_s / ours.generate_s).toFixed(2)}x`,
        `${(ours.peak_rss_mb / theirs.peak_rss_mb).toFixed(2)}x`,
      ]);
    }
    printTable(lines);
    lines.splice(1);
  }
  console.log("ratio = our throughput / PyTorch's (above 1 is faster); for memory, ours / PyTorch's.\n");
  for (const batch of [1, 4, 8]) {
    const { cached, recomputed } = await cacheSpeedup(backend, batch);
    console.log(
      `KV cache (gpt2-4x256, 256 new tokens, batch ${batch}): ${fmt(cached, 1)} tok/s cached, ${
        fmt(recomputed, 1)
      } tok/s recomputing the prefix: ${(cached / recomputed).toFixed(1)}x faster`,
    );
  }
}

let printedHeader = false;
function printTable(lines: string[][]): void {
  const widths = [12, 7, 11, 14, 14, 15, 12];
  const render = (cells: string[]) =>
    cells.map((c, i) => i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join(" ");
  for (const [i, cells] of lines.entries()) {
    if (i === 0) {
      if (printedHeader) continue;
      printedHeader = true;
    }
    console.log(render(cells));
  }
}

if (import.meta.main) await main();
