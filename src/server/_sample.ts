/** Sampling from a served policy, without importing TF.js (the policy brings its own `generate`). */
import type { GenerateOptions, Generation } from "../model/decoding/generate.ts";
import type { ServedPolicy } from "./policy.ts";

/** Samples `n` responses to one prompt in one batch. */
export function sampleResponses(
  policy: ServedPolicy,
  promptText: string,
  n: number,
  options: GenerateOptions,
): Promise<Generation[]> {
  const ids = policy.tokenizer.encode(promptText);
  return policy.generate(Array.from({ length: n }, () => ids), options);
}
