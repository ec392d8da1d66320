/**
 * `deno task bench:batching`: generated tokens per second when C requests arrive at once, served
 * (i) each by its own `generate` call, as the server did before continuous batching, and
 * (ii) through one `DecodeScheduler`, which decodes all of them in one loop.
 *
 *   deno task bench:batching [--size gpt2-4x256] [--concurrency 1,4,16] [--tokens 32] [--backend wasm]
 *
 * Each request is one different 16-token prompt, greedy, `stopAtEos: false`, so every request makes
 * exactly `--tokens` tokens and both arms do the same work.
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
  }, args);
  if (!SIZES[values.size!]) throw new Error(`Unknown size '${values.size}' (known: ${Object.keys(SIZES)})`);
  const concurrency = values.concurrency!.split(",").map(Number);
  if (concurrency.some((c) => !Number.isInteger(c) || c < 1)) {
    throw new Error(
      `Cannot run as '--concurrency' must list positive integers: current value is ${values.concurrency}`,
    );
  }
  const tokens = Number(values.tokens);
  if (!Number.isInteger(tokens) || tokens < 1) {
    throw new Error(`Cannot run as '--tokens' must be a positive integer: current value is ${values.tokens}`);
  }
  if (!(BACKENDS as readonly string[]).includes(values.backend!)) {
    throw new Error(`Unknown backend '${values.backend}' (known: ${BACKENDS})`);
  }
  return { size: values.size!, concurrency, tokens, backend: values.backend as BackendChoice };
}

/** C different prompts of 16 token ids. */
function prompts(count: number, vocab: number): number[][] {
  return Array.from(
    { length: count },
    (_, c) => Array.from({ length: PROMPT_TOKENS }, (_, i) => (97 * c + 31 * i + 11) % vocab),
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

async function main(): Promise<void> {
  const { size, concurrency, tokens, backend } = options(Deno.args);
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
  model.dispose();
}

if (import.meta.main) await main();
