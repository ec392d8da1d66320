/**
 * `start`: the embedded default. Until the server, judges and trainer land, it
 * exercises what exists end to end on the default model: backend choice,
 * loading, generation with the KV cache, and sequence log-probs.
 */
import { z } from "zod";
import { fileURLToPath } from "node:url";
import { generate } from "../model/generate.ts";
import { scorePairs } from "../model/logprobs.ts";
import { backendOption, loadForCli, log, MODEL_OPTIONS, MODEL_USAGE, parseCommand, validate } from "./common.ts";

/** The model `start` uses when none is given: the committed tiny GPT-2 fixture. */
export const DEFAULT_MODEL = fileURLToPath(new URL("../../tests/fixtures/gpt2_tiny", import.meta.url));

/** Usage text of the command. */
export const START_USAGE = `Usage: deno task start [options]

Runs the embedded default on the default model (${DEFAULT_MODEL}):
samples completions for a few prompts with the KV cache and scores them.

${MODEL_USAGE}`;

const Options = z.object({
  model: z.string().default(DEFAULT_MODEL),
  backend: backendOption,
  "cache-dir": z.string().optional(),
});

const PROMPTS = ["What is 12+7? The answer is", "The cat sat on the", "Question: what is two plus two?"];

/** Runs the command. */
export async function runStart(args: string[]): Promise<void> {
  const values = parseCommand(args, MODEL_OPTIONS);
  if (values.help) return void console.log(START_USAGE);
  const opts = validate(Options, values);
  const { model, tokenizer } = await loadForCli(opts);
  const promptIds = PROMPTS.map((p) => tokenizer.encode(p));
  const start = performance.now();
  const results = await generate(model, tokenizer, promptIds, { maxNewTokens: 24, temperature: 0.8, seed: 1 });
  const seconds = (performance.now() - start) / 1000;
  const tokens = results.reduce((a, r) => a + r.tokenIds.length, 0);
  const scores = await scorePairs(
    model,
    results.map((r, i) => ({ promptIds: promptIds[i]!, completionIds: r.tokenIds })),
    { eosId: tokenizer.eosTokenId, maxLength: model.config.n_positions },
  );
  results.forEach((r, i) => {
    console.log(`prompt:     ${JSON.stringify(PROMPTS[i])}`);
    console.log(`completion: ${JSON.stringify(r.text)} (${r.finishReason})`);
    console.log(`log π(y|x): ${scores[i]!.logp.toFixed(3)} over ${scores[i]!.nTokens} tokens\n`);
  });
  log(`generated ${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / seconds).toFixed(1)} tokens/s, batch of 3)`);
  model.dispose();
}
