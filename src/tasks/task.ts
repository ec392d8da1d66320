/**
 * A task: where training prompts come from, a held-out set the trainer never trains on, and a checker.
 * With one, every published version is evaluated and the promotion gate can compare versions; `start`
 * and `worker` name it (`--task`, `--eval`), the judge spec can use its checker as a verifier judge.
 * A new one is a module exporting a `Task` and its line in `registry.ts`.
 */
import type { Prompt } from "../judge/types.ts";

export interface Task {
  /** Its name on the command line and in the judge spec. */
  readonly name: string;
  /** One line for logs. */
  readonly description: string;
  /** An endless, seeded stream of training prompts, none of them held out. */
  trainingPrompts(seed: number): () => Prompt;
  /** How many held-out prompts there are. */
  readonly heldOutSize: number;
  /**
   * The first `count` held-out prompts (plain text), the same on every call and machine: the evaluation takes the first
   * ones, the gate the ones after them.
   */
  heldOut(count: number): string[];
  /** The checker: a score per answer, higher is better. */
  score(prompt: Prompt, completion: string): number;
  /** New tokens a greedy held-out answer needs at most. */
  readonly answerTokens: number;
}
