/** `generate`: sample continuations of one or more prompts, streamed to stdout. */
import { z } from "zod";
import { generate } from "../model/decoding/generate.ts";
import {
  backendOption,
  loadForCli,
  log,
  MODEL_OPTIONS,
  MODEL_USAGE,
  numberOption,
  parseCommand,
  validate,
  writeStdout,
} from "./common.ts";

/** Usage text of the command. */
export const GENERATE_USAGE = `Usage: deno task cli generate --model DIR --prompt TEXT [options]

Streams the continuation of one prompt to stdout; with several --prompt (one batch) or --json,
prints one JSON line {"index", "text", "finish_reason", "n_tokens"} per prompt.

${MODEL_USAGE}
  --prompt TEXT          prompt text (repeat for a batch)
  --chat                 wrap each prompt as a user message in the model's chat template
  --max-new-tokens N     most tokens to generate (default 64)
  --temperature T        0 for greedy (default 1)
  --top-k K              keep the K most likely tokens, 0 for all (default 0)
  --top-p P              nucleus sampling mass, 1 for all (default 1)
  --seed S               makes sampling reproducible
  --stop TEXT            stop before this string (repeatable)
  --no-cache             recompute the whole prefix each step (slow; for comparison)
  --json                 print JSON lines instead of streaming text`;

const Options = z.object({
  model: z.string({ error: "is required" }),
  prompt: z.array(z.string()).min(1, "is required"),
  backend: backendOption,
  "cache-dir": z.string().optional(),
  chat: z.boolean().default(false),
  "max-new-tokens": numberOption((n) => n.int().positive()).default(64),
  temperature: numberOption((n) => n.nonnegative()).default(1),
  "top-k": numberOption((n) => n.int().nonnegative()).default(0),
  "top-p": numberOption((n) => n.gt(0).lte(1)).default(1),
  seed: numberOption((n) => n.int().nonnegative()).optional(),
  stop: z.array(z.string()).default([]),
  "no-cache": z.boolean().default(false),
  json: z.boolean().default(false),
});

/** Runs the command. */
export async function runGenerate(args: string[]): Promise<void> {
  const values = parseCommand(args, {
    ...MODEL_OPTIONS,
    prompt: { type: "string", multiple: true },
    chat: { type: "boolean" },
    "max-new-tokens": { type: "string" },
    temperature: { type: "string" },
    "top-k": { type: "string" },
    "top-p": { type: "string" },
    seed: { type: "string" },
    stop: { type: "string", multiple: true },
    "no-cache": { type: "boolean" },
    json: { type: "boolean" },
  });
  if (values.help) return void console.log(GENERATE_USAGE);
  const opts = validate(Options, values);
  const { model, tokenizer } = await loadForCli(opts);
  const texts = opts.chat
    ? opts.prompt.map((p) => tokenizer.applyChatTemplate([{ role: "user", content: p }], { addGenerationPrompt: true }))
    : opts.prompt;
  const stream = !opts.json && texts.length === 1;
  const start = performance.now();
  let pending = Promise.resolve();
  const results = await generate(model, tokenizer, texts.map((t) => tokenizer.encode(t)), {
    maxNewTokens: opts["max-new-tokens"],
    temperature: opts.temperature,
    topK: opts["top-k"],
    topP: opts["top-p"],
    seed: opts.seed,
    stop: opts.stop,
    useCache: !opts["no-cache"],
    onToken: stream ? (e) => void (pending = pending.then(() => writeStdout(e.text))) : undefined,
  });
  await pending;
  const seconds = (performance.now() - start) / 1000;
  const tokens = results.reduce((a, r) => a + r.tokenIds.length, 0);
  if (stream) await writeStdout("\n");
  else {
    await writeStdout(
      results.map((r, index) =>
        JSON.stringify({ index, text: r.text, finish_reason: r.finishReason, n_tokens: r.tokenIds.length }) + "\n"
      ).join(""),
    );
  }
  log(`generated ${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / seconds).toFixed(1)} tokens/s)`);
  model.dispose();
}
