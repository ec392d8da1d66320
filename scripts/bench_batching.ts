/**
 * `deno task bench:batching`: generated tokens per second when C requests arrive at once, served
 * (i) each by its own `generate` call, as the server did before continuous batching, and
 * (ii) through one `DecodeScheduler`, which decodes all of them in one loop.
 *
 *   deno task bench:batching [--size gpt2-4x256] [--concurrency 1,4,16] [--tokens 32] [--backend wasm]
 *
 * Each request is one different 16-token prompt, greedy, `stopAtEos: false`, so every request makes
 * exactly `--tokens` tokens and both arms do the same work.
 *
 * Then one request of `--samples` rows (4) with `--prompt-tokens`-token prompts (512), sampled: the same prompt in
 * every row (the online loop's n samples of a prompt, prefilled once) against a different prompt in each.
 */
import { scriptArgs } from "./_args.ts";
import { fmt, randomModel, SIZES } from "./_bench_common.ts";
import { type BackendChoice, BACKENDS, describeBackend, initBackend } from "../src/model/kernels/backend.ts";
import { generate } from "../src/model/decoding/generate.ts";
import type { CausalLM } from "../src/model/arch/causal_lm.ts";
import { DecodeScheduler } from "../src/model/decoding/scheduler.ts";

const PROMPT_TOKENS = 16;

function options(args: string[]) {
  const { values } = scriptArgs(import.meta.url, {
    size: { type: "string", default: "gpt2-4x256" },
    concurrency: { type: "string", default: "1,4,16" },
    tokens: { type: "string", default: "32" },
    backend: { type: "string", default: "wasm" },
    samples: { type: "string", default: "4" },
    "prompt-tokens": { type: "string", default: "512" },
  }, args);
  if (!SIZES[values.size!]) throw new Error(`Unknown size '${values.size}' (known: ${Object.keys(SIZES)})`);
  const concurrency = values.concurrency!.split(",").map(Number);
  if (concurrency.some((c) => !Number.isInteger(c) || c < 1)) {
    throw new Error(
      `Cannot run as '--concurrency' must list positive integers: current value is ${values.concurrency}`,
    );
  }
  const [tokens, samples, promptTokens] = (["tokens", "samples", "prompt-tokens"] as const).map((name) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < 1) {
      throw new Error(`Cannot run as '--${name}' must be a positive integer: current value is ${values[name]}`);
    }
    return n;
  }) as [number, number, number];
  if (!(BACKENDS as readonly string[]).includes(values.backend!)) {
    throw new Error(`Unknown backend '${values.backend}' (known: ${BACKENDS})`);
  }
  return { size: values.size!, concurrency, tokens, samples, promptTokens, backend: values.backend as BackendChoice };
}

/** C different prompts of `length` token ids. */
function prompts(count: number, vocab: number, length = PROMPT_TOKENS): number[][] {
  return Array.from(
    { length: count },
    (_, c) => Array.from({ length }, (_, i) => (97 * c + 31 * i + 11) % vocab),
  );
}

/** Seconds to serve every prompt as its own request, all started at once. */
async function timed(run: (prompt: number[]) => Promise<unknown>, all: number[][]): Promise<number> {
  const start = performance.now();
  await Promise.all(all.map(run));
  return (performance.now() - start) / 1000;
}

async function measure(model: CausalLM, concurrency: number, tokens: number) {
  const codec = { eosTokenId: model.config.vocab_size - 1, decode: () => "" };
  const opts = { temperature: 0, maxNewTokens: tokens, stopAtEos: false };
  const all = prompts(concurrency, model.config.vocab_size);
  const separate = await timed((p) => generate(model, codec, [p], opts), all);
  const scheduler = new DecodeScheduler(model, codec, { maxBatchRows: Math.max(32, concurrency) });
  const batched = await timed((p) => scheduler.submit([p], opts), all);
  const { steps, rowSteps } = scheduler.stats;
  await scheduler.close();
  const total = concurrency * tokens;
  return { separate: total / separate, batched: total / batched, rowsPerStep: rowSteps / steps };
}

/**
 * Seconds (the fastest of three) for one sampled request of `rows` rows: `rows` different prompts, and one prompt
 * `rows` times.
 */
async function samplesOfOnePrompt(model: CausalLM, rows: number, promptTokens: number, tokens: number) {
  const codec = { eosTokenId: model.config.vocab_size - 1, decode: () => "" };
  const opts = { temperature: 1, maxNewTokens: tokens, stopAtEos: false, seed: 1 };
  const different = prompts(rows, model.config.vocab_size, promptTokens);
  const same = different.map(() => different[0]!);
  const fastest = async (batch: number[][]) => {
    let best = Infinity;
    for (let i = 0; i < 3; i++) best = Math.min(best, await timed(() => generate(model, codec, batch, opts), [[]]));
    return best;
  };
  return { different: await fastest(different), same: await fastest(same) };
}

async function main(): Promise<void> {
  const { size, concurrency, tokens, samples, promptTokens, backend } = options(Deno.args);
  console.log(`# ${describeBackend(await initBackend(backend))}; ${navigator.hardwareConcurrency} cores`);
  console.log(`# ${size}, ${PROMPT_TOKENS}-token prompts, ${tokens} new tokens per request, greedy`);
  const model = randomModel(SIZES[size]!, 0, false);
  await measure(model, 2, 2); // warm-up: kernels compiled, memory allocated
  console.log("| concurrency | tokens/s separate | tokens/s batched | speed-up | mean rows per step |");
  console.log("|---:|---:|---:|---:|---:|");
  for (const c of concurrency) {
    const r = await measure(model, c, tokens);
    console.log(
      `| ${c} | ${fmt(r.separate, 1)} | ${fmt(r.batched, 1)} | ${fmt(r.batched / r.separate, 2)}x | ${
        fmt(r.rowsPerStep, 1)
      } |`,
    );
  }
  const shared = await samplesOfOnePrompt(model, samples, promptTokens, tokens);
  console.log(`\n# one request of ${samples} rows, ${promptTokens}-token prompts, ${tokens} new tokens each, sampled`);
  console.log("| rows | s, a different prompt each | s, one prompt in every row | speed-up |");
  console.log("|---:|---:|---:|---:|");
  console.log(
    `| ${samples} | ${fmt(shared.different, 2)} | ${fmt(shared.same, 2)} | ${
      fmt(shared.different / shared.same, 2)
    }x |`,
  );
  model.dispose();
}

if (import.meta.main) await main();
