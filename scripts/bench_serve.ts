/**
 * `deno task bench:serve`: the OpenAI-compatible chat endpoint under C concurrent streaming clients, next to
 * the same load on the decoder alone, so that what HTTP and SSE cost is a number. For each C, C clients each
 * send requests back to back for --seconds, after one warm-up request each:
 *   - http: the official `openai` SDK (`stream: true`, `stream_options.include_usage`) against
 *     `deno run -A main.ts serve` in a process of its own, on a free loopback port with a temporary KV;
 *   - decoder: the same prompts, rendered with the model's chat template and tokenized as the route does,
 *     submitted to a `DecodeScheduler` in this process (what the server decodes through, same batch limit).
 *
 *   deno task bench:serve [--concurrency 1,8,32] [--seconds 10] [--tokens 32] [--backend wasm]
 *                         [--model DIR | --size tiny|gpt2-4x256|gpt2-8x512|gpt2-small] [--json FILE]
 *
 * The model is the shipped fixture tests/fixtures/gpt2_tiny unless --model names a model directory or --size
 * a random GPT-2 of that shape (saved to the temporary directory, with a byte-level tokenizer that names
 * every id of its vocabulary). Requests are greedy (temperature 0) with distinct short prompts and
 * max_tokens --tokens; an end token ends a request early on both paths alike.
 *
 * TTFT: from sending (submitting) a request to its first token with text (the first SSE content chunk).
 * tok/s per stream: the median over requests of completion tokens (the usage's) / (end - start), a stream's
 * end being its last byte read ([DONE]): what a client waits for the whole answer, its first token included.
 * tok/s total: every completion token of the run over the run's time (to the last request's end).
 * "http / decoder" is the ratio of the totals.
 * The clients run in this process: on the http path the SDK's SSE parsing shares the cores with the server.
 */
import OpenAI from "openai";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { scriptArgs, usageError as scriptUsageError } from "./_args.ts";
import { fmt, loadLine, machineLine, randomModel, SIZES } from "./_bench_common.ts";
import { percentile } from "./_load_client.ts";
import { type ServeProcess, startServe, stopServe } from "./_serve_process.ts";
import { type BackendChoice, BACKENDS, describeBackend, initBackend } from "../src/model/kernels/backend.ts";
import { loadModel, saveModel } from "../src/model/io/checkpoint.ts";
import { resolveModel } from "../src/model/io/hub.ts";
import type { Tokenizer } from "../src/model/io/tokenizer.ts";
import type { ChatMessage } from "../src/model/io/messages.ts";
import { DecodeScheduler } from "../src/model/decoding/scheduler.ts";
import { renderPrompt } from "../src/dpo/fit.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const FIXTURE = join(ROOT, "tests/fixtures/gpt2_tiny");
// Byte-level, 257 tokens (eos 256), with a chat template: the tokenizer of the random models of --size.
const BYTE_TOKENIZER = join(ROOT, "models/arith-tiny");
const KEY = "bench-serve-key-0001";
const START_TIMEOUT_S = 300;

interface Options {
  concurrency: number[];
  seconds: number;
  tokens: number;
  backend: BackendChoice;
  model?: string;
  size?: string;
  json?: string;
}

/** A mistake in the options: one line and the usage, exit code 2 (as scriptArgs does). */
function usageError(message: string): never {
  return scriptUsageError(import.meta.url, message);
}

function positiveInteger(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) usageError(`--${name} must be a positive integer: current value is '${value}'`);
  return n;
}

function options(args: string[]): Options {
  const { values } = scriptArgs(import.meta.url, {
    concurrency: { type: "string", default: "1,8,32" },
    seconds: { type: "string", default: "10" },
    tokens: { type: "string", default: "32" },
    backend: { type: "string", default: "wasm" },
    model: { type: "string" },
    size: { type: "string" },
    json: { type: "string" },
  }, args);
  const concurrency = values.concurrency.split(",").map((c) => positiveInteger("concurrency", c.trim()));
  const seconds = Number(values.seconds);
  if (!(seconds > 0 && Number.isFinite(seconds))) {
    usageError(`--seconds must be a positive number: current value is '${values.seconds}'`);
  }
  if (!(BACKENDS as readonly string[]).includes(values.backend)) {
    usageError(`--backend must be one of ${BACKENDS.join(", ")}: current value is '${values.backend}'`);
  }
  if (values.size !== undefined && !SIZES[values.size]) {
    usageError(`--size must be one of ${Object.keys(SIZES).join(", ")}: current value is '${values.size}'`);
  }
  if (values.size !== undefined && values.model !== undefined) usageError("--model and --size exclude each other");
  return {
    concurrency,
    seconds,
    tokens: positiveInteger("tokens", values.tokens),
    backend: values.backend as BackendChoice,
    model: values.model,
    size: values.size,
    json: values.json,
  };
}

/** Saves a random GPT-2 of `size` to `dir`, with the byte-level tokenizer widened to every id of its vocabulary. */
async function saveRandomModel(size: string, dir: string): Promise<string> {
  const shape = SIZES[size]!;
  const model = randomModel(shape, 0, false);
  const out = join(dir, `random-${size}`);
  try {
    const rawConfig = { model_type: "gpt2", ...shape, bos_token_id: 256, eos_token_id: 256 };
    await saveModel({ model, rawConfig, dir: BYTE_TOKENIZER }, out);
  } finally {
    model.dispose();
  }
  // A random model's argmax is almost never one of the 257 byte tokens: ids without a token would stream no
  // text (no SSE chunk, no TTFT). Each gets a word of its own (" w1234"), which decoding needs, encoding never.
  const tokenizer = JSON.parse(await Deno.readTextFile(join(out, "tokenizer.json")));
  for (let id = 257; id < shape.vocab_size; id++) tokenizer.model.vocab[`\u0120w${id}`] = id;
  await Deno.writeTextFile(join(out, "tokenizer.json"), JSON.stringify(tokenizer));
  return out;
}

/** The `k`-th prompt of client `client`: short and different from every other. */
function promptOf(client: number, k: number): (ChatMessage & { role: "user" })[] {
  return [{ role: "user", content: `Echo ${client}-${k}.` }];
}

/** One request: when it was sent, when its first text arrived, when it ended (ms), and its completion tokens. */
interface Sample {
  start: number;
  first?: number;
  end: number;
  tokens: number;
}

/** Sends client `client`'s `k`-th request and times it. */
type Send = (client: number, k: number) => Promise<Sample>;

/** What one arm measured. */
interface Figures {
  concurrency: number;
  path: "http" | "decoder";
  requests: number;
  errors: number;
  seconds: number;
  completionTokens: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  perStreamTokensPerS: number;
  totalTokensPerS: number;
}

/** C clients, one warm-up request each (all at once), then requests back to back until `seconds` have passed. */
async function drive(send: Send, path: Figures["path"], concurrency: number, seconds: number): Promise<Figures> {
  try {
    await Promise.all(Array.from({ length: concurrency }, (_, c) => send(c, 0)));
  } catch (err) {
    throw new Error(`Cannot measure ${path} at concurrency ${concurrency}: a warm-up request failed: ${err}`);
  }
  const samples: Sample[] = [];
  let errors = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  await Promise.all(Array.from({ length: concurrency }, async (_, c) => {
    for (let k = 1; performance.now() < deadline; k++) {
      try {
        samples.push(await send(c, k));
      } catch (err) {
        if (errors++ === 0) console.error(`# first ${path} error at concurrency ${concurrency}: ${err}`);
      }
    }
  }));
  const elapsed = (performance.now() - start) / 1000;
  const sorted = (xs: number[]) => xs.sort((a, b) => a - b);
  const ttft = sorted(samples.flatMap((s) => s.first === undefined ? [] : [s.first - s.start]));
  const rates = sorted(samples.map((s) => s.tokens / ((s.end - s.start) / 1000)));
  const completionTokens = samples.reduce((n, s) => n + s.tokens, 0);
  return {
    concurrency,
    path,
    requests: samples.length,
    errors,
    seconds: elapsed,
    completionTokens,
    ttftP50Ms: percentile(ttft, 50),
    ttftP99Ms: percentile(ttft, 99),
    perStreamTokensPerS: percentile(rates, 50),
    totalTokensPerS: completionTokens / elapsed,
  };
}

/** Requests through the `openai` SDK, streamed with the usage chunk. */
function httpSender(client: OpenAI, tokens: number): Send {
  return async (c, k) => {
    const start = performance.now();
    let first: number | undefined;
    let completionTokens: number | undefined;
    const stream = await client.chat.completions.create({
      model: "policy",
      messages: promptOf(c, k),
      max_tokens: tokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) {
      if (first === undefined && chunk.choices[0]?.delta.content) first = performance.now();
      if (chunk.usage) completionTokens = chunk.usage.completion_tokens;
    }
    if (completionTokens === undefined) throw new Error("the stream ended without its usage chunk");
    return { start, first, end: performance.now(), tokens: completionTokens };
  };
}

/** The same requests straight to the scheduler, with the options the chat route passes. */
function decoderSender(scheduler: DecodeScheduler, tokenizer: Tokenizer, tokens: number): Send {
  return async (c, k) => {
    const ids = tokenizer.encode(renderPrompt(tokenizer, promptOf(c, k)));
    const start = performance.now();
    let first: number | undefined;
    const [generation] = await scheduler.submit([ids], {
      temperature: 0,
      topP: 1,
      maxNewTokens: tokens,
      onToken: (e) => {
        if (first === undefined && e.text) first = performance.now();
      },
    });
    return { start, first, end: performance.now(), tokens: generation!.tokenIds.length };
  };
}

/** Starts `main.ts serve` with the model on a free loopback port, its state in `dir`. */
function startServer(dir: string, model: string, backend: BackendChoice): Promise<ServeProcess> {
  return startServe(
    [
      "--model",
      model,
      "--backend",
      backend,
      "--kv",
      join(dir, "dpo.kv"),
      "--checkpoints",
      `dir:${join(dir, "ckpts")}`,
      "--cache-dir",
      join(dir, "cache"),
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--rate-limit",
      "100000000",
    ],
    { DPO_API_KEYS: KEY },
    START_TIMEOUT_S,
  );
}

function table(rows: Figures[]): string[] {
  const decoderTotal = new Map(rows.filter((r) => r.path === "decoder").map((r) => [r.concurrency, r.totalTokensPerS]));
  const ms = (x: number) => Number.isNaN(x) ? "-" : fmt(x, 1);
  const lines = [
    "| concurrency | path | requests | errors | TTFT p50 (ms) | TTFT p99 (ms) | tok/s per stream | tok/s total | http / decoder |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    const base = decoderTotal.get(r.concurrency);
    const ratio = r.path === "http" && base ? fmt(r.totalTokensPerS / base, 2) : "";
    lines.push(
      `| ${r.concurrency} | ${r.path} | ${r.requests} | ${r.errors} | ${ms(r.ttftP50Ms)} | ${ms(r.ttftP99Ms)} | ` +
        `${ms(r.perStreamTokensPerS)} | ${fmt(r.totalTokensPerS, 1)} | ${ratio} |`,
    );
  }
  return lines;
}

async function main(): Promise<void> {
  const o = options(Deno.args);
  console.log(`# machine: ${machineLine()}`);
  const load = loadLine();
  if (load) console.log(`# ${load}`);
  const report = await initBackend(o.backend);
  const dir = await Deno.makeTempDir({ prefix: "bench_serve_" });
  let server: ServeProcess | undefined;
  const onSignal = () => {
    server?.child.kill("SIGTERM");
    Deno.removeSync(dir, { recursive: true });
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const rows: Figures[] = [];
  try {
    const modelDir = o.size ? await saveRandomModel(o.size, dir) : await resolveModel(o.model ?? FIXTURE);
    const modelName = o.size ? `random ${o.size}` : o.model ?? "tests/fixtures/gpt2_tiny";
    console.error(`# starting the server (${modelName}) ...`);
    server = await startServer(dir, modelDir, o.backend);
    const { model, tokenizer } = await loadModel(modelDir, { trainable: false, mergeAdapter: true });
    console.log(
      `# ${describeBackend(report)}, in the server and in this process; model ${modelName} ` +
        `(${model.contextLength}-token context)`,
    );
    console.log(
      `# concurrency ${o.concurrency.join(",")}, ${o.seconds} s per arm after one warm-up request per client, ` +
        `max_tokens ${o.tokens}, greedy, prompts like ${JSON.stringify(promptOf(0, 1)[0]!.content)}`,
    );
    const client = new OpenAI({ apiKey: KEY, baseURL: `${server.url}/v1`, maxRetries: 0 });
    const scheduler = new DecodeScheduler(model, tokenizer);
    try {
      for (const c of o.concurrency) {
        const arms: [Figures["path"], Send][] = [
          ["http", httpSender(client, o.tokens)],
          ["decoder", decoderSender(scheduler, tokenizer, o.tokens)],
        ];
        for (const [path, send] of arms) {
          const r = await drive(send, path, c, o.seconds);
          console.error(
            `# concurrency ${c}, ${path}: ${r.requests} requests, ${r.errors} errors, ` +
              `${fmt(r.totalTokensPerS, 1)} tok/s in ${fmt(r.seconds, 1)} s`,
          );
          rows.push(r);
        }
      }
    } finally {
      await scheduler.close();
      model.dispose();
    }
    console.log(table(rows).join("\n"));
    if (o.json) {
      const figures = { machine: machineLine(), ...o, backend: report.backend, model: modelName, rows };
      await Deno.writeTextFile(o.json, JSON.stringify(figures, null, 2) + "\n");
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await stopServe(server);
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (err) {
    console.error(`error: ${(err as Error).message}`);
    Deno.exit(1);
  }
}
