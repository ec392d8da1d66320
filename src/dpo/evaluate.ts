/**
 * Held-out evaluation of a policy version: greedy answers to held-out prompts, scored by the task's
 * checker, and compared prompt by prompt with the base policy's answers (win rate: wins plus half the
 * ties). The trainer stores the result with every version it publishes; the learning benchmark uses the
 * same function.
 */
import { z } from "zod";
import type { CausalLM } from "../model/arch/causal_lm.ts";
import type { Tokenizer } from "../model/io/tokenizer.ts";

/** A task's checker: a score per answer, higher is better (the arithmetic task scores 1 or 0). */
export type ScoreFn = (prompt: string, completion: string) => number | Promise<number>;

/** The evaluation of one policy version, stored under `evalKey(version)`. */
export const VersionEvalSchema = z.object({
  version: z.number().int().nonnegative(),
  /** Held-out prompts evaluated. */
  prompts: z.number().int().positive(),
  /** Mean score of the greedy answers (for a 0/1 checker, the share answered right). */
  accuracy: z.number(),
  /** The base policy's accuracy on the same prompts. */
  base_accuracy: z.number(),
  /** Share of prompts where this version's answer scores higher than the base's, ties counting half. */
  win_rate_vs_base: z.number().min(0).max(1),
  at: z.number().int().nonnegative(),
  seconds: z.number().nonnegative(),
});
/** The evaluation of one policy version. */
export type VersionEval = z.infer<typeof VersionEvalSchema>;

/** Greedy answers of a model to prompts, and their scores. */
export interface Answers {
  texts: string[];
  scores: number[];
}

/** Options of `answerHeldOut`. */
export interface AnswerOptions {
  maxNewTokens: number;
  /** Prompts per generation batch. Default 64. */
  batchSize?: number;
}

/** Answers every prompt greedily and scores the answers. */
export async function answerHeldOut(
  model: CausalLM,
  tokenizer: Tokenizer,
  prompts: string[],
  score: ScoreFn,
  options: AnswerOptions,
): Promise<Answers> {
  // Imported here: the schemas above are read by processes that never generate (the dashboard's server).
  const { generate } = await import("../model/decoding/generate.ts");
  const texts: string[] = [];
  const batchSize = options.batchSize ?? 64;
  for (let i = 0; i < prompts.length; i += batchSize) {
    const ids = prompts.slice(i, i + batchSize).map((p) => tokenizer.encode(p));
    const out = await generate(model, tokenizer, ids, { temperature: 0, maxNewTokens: options.maxNewTokens });
    texts.push(...out.map((g) => g.text));
  }
  const scores = await Promise.all(texts.map((t, i) => score(prompts[i]!, t)));
  return { texts, scores };
}

/** Compares a version's answers with the base's on the same prompts. */
export function compareWithBase(
  version: number,
  answers: Answers,
  base: Answers,
  seconds: number,
): VersionEval {
  const n = answers.scores.length;
  if (n === 0 || base.scores.length !== n) {
    throw new Error(`Cannot compare with the base: ${n} answers against ${base.scores.length} base answers`);
  }
  let wins = 0;
  answers.scores.forEach((s, i) => {
    const b = base.scores[i]!;
    wins += s > b ? 1 : s === b ? 0.5 : 0;
  });
  const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
  return {
    version,
    prompts: n,
    accuracy: mean(answers.scores),
    base_accuracy: mean(base.scores),
    win_rate_vs_base: wins / n,
    at: Date.now(),
    seconds,
  };
}
