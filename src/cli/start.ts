/**
 * `start`: the embedded default. Until it runs the whole online loop (issue 5), it exercises the
 * shipped base policy end to end: backend choice, loading, batched generation with the KV cache,
 * the arithmetic verifier, and sequence log-probs.
 */
import { z } from "zod";
import { fileURLToPath } from "node:url";
import { generate } from "../model/generate.ts";
import { heldOutArithmeticPrompts, score } from "../judge/arithmetic.ts";
import { scorePairs } from "../model/logprobs.ts";
import { backendOption, loadForCli, log, MODEL_OPTIONS, MODEL_USAGE, parseCommand, validate } from "./common.ts";

/** The model `start` uses when none is given: the shipped base policy (scripts/make_base_model.ts). */
export const DEFAULT_MODEL = fileURLToPath(new URL("../../models/arith-tiny", import.meta.url));

/** Usage text of the command. */
export const START_USAGE = `Usage: deno task start [options]

Runs the shipped base policy (${DEFAULT_MODEL}) on held-out arithmetic prompts:
samples answers with the KV cache, checks them with the arithmetic verifier and prints their log-probs.

${MODEL_USAGE}`;

const Options = z.object({
  model: z.string().default(DEFAULT_MODEL),
  backend: backendOption,
  "cache-dir": z.string().optional(),
});

const PROMPTS = heldOutArithmeticPrompts(8, { minOperand: 0, maxOperand: 99 });

/** Runs the command. */
export async function runStart(args: string[]): Promise<void> {
  const values = parseCommand(args, MODEL_OPTIONS);
  if (values.help) return void console.log(START_USAGE);
  const opts = validate(Options, values);
  const { model, tokenizer } = await loadForCli(opts);
  const promptIds = PROMPTS.map((p) => tokenizer.encode(p));
  const start = performance.now();
  const results = await generate(model, tokenizer, promptIds, { maxNewTokens: 6, temperature: 0.7, seed: 1 });
  const seconds = (performance.now() - start) / 1000;
  const tokens = results.reduce((a, r) => a + r.tokenIds.length, 0);
  const scores = await scorePairs(
    model,
    results.map((r, i) => ({ promptIds: promptIds[i]!, completionIds: r.tokenIds })),
    { eosId: tokenizer.eosTokenId, maxLength: model.config.n_positions },
  );
  let correct = 0;
  results.forEach((r, i) => {
    const right = score(PROMPTS[i]!, r.text) === 1;
    if (right) correct++;
    console.log(
      `${PROMPTS[i]}${r.text.padEnd(6)} ${right ? "right" : "wrong"}   log π(y|x) ${scores[i]!.logp.toFixed(2)}`,
    );
  });
  console.log(
    `\n${correct}/${PROMPTS.length} right (the base policy is imperfect on purpose: DPO has room to improve)`,
  );
  log(`generated ${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / seconds).toFixed(1)} tokens/s, batch of 8)`);
  model.dispose();
}
