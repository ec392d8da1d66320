/** `generate`: sample continuations of one or more prompts, streamed to stdout. */
import { z } from "zod";
import { generate } from "../model/decoding/generate.ts";
import { loadForCli, log, writeStdout } from "./common.ts";
import { flag, number, optionsUsage, parseOptions, SHARED, text } from "./_options.ts";

export const OPTIONS = {
  model: { ...SHARED.model, schema: z.string({ error: "is required" }) },
  backend: SHARED.backend,
  "cache-dir": SHARED["cache-dir"],
  prompt: text("TEXT", "prompt text (repeat for a batch)", z.array(z.string()).min(1, "is required"), {
    multiple: true,
  }),
  chat: flag("wrap each prompt as a user message in the model's chat template"),
  "max-new-tokens": number("N", "most tokens to generate", (n) => n.int().positive(), 64),
  temperature: number("T", "0 for greedy", (n) => n.nonnegative(), 1),
  "top-k": number("K", "keep the K most likely tokens, 0 for all", (n) => n.int().nonnegative(), 0),
  "top-p": number("P", "nucleus sampling mass, 1 for all", (n) => n.gt(0).lte(1), 1),
  seed: number("S", "makes sampling reproducible", (n) => n.int().nonnegative()),
  stop: text("TEXT", "stop before this string (repeatable)", z.array(z.string()).default([]), { multiple: true }),
  "no-cache": flag("recompute the whole prefix each step (slow; for comparison)"),
  json: flag("print JSON lines instead of streaming text"),
};

/** Usage text of the command. */
export const GENERATE_USAGE = `Usage: deno task cli generate --model DIR --prompt TEXT [options]

Streams the continuation of one prompt to stdout; with several --prompt (one batch) or --json,
prints one JSON line {"index", "text", "finish_reason", "n_tokens"} per prompt.

${optionsUsage(OPTIONS)}`;

/** Runs the command. */
export async function runGenerate(args: string[]): Promise<void> {
  const parsed = parseOptions(args, OPTIONS);
  if (parsed.help) return void console.log(GENERATE_USAGE);
  const opts = parsed.values;
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
