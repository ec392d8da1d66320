/**
 * The policy being served, swappable while requests run: a request holds the version it started
 * with until it finishes, and a replaced version's weights are freed only after its last request.
 */
import type { Gpt2Model } from "../model/gpt2.ts";
import { generate, type GenerateOptions, type Generation } from "../model/generate.ts";
import type { ChatMessage, Tokenizer } from "../model/tokenizer.ts";

/** One servable policy version. */
export interface PolicyVersion {
  model: Gpt2Model;
  tokenizer: Tokenizer;
  version: number;
}

interface Held {
  policy: PolicyVersion;
  users: number;
  retired: boolean;
}

/** Holds the current policy and hands it out per request. */
export class PolicyHolder {
  #current: Held;

  constructor(initial: PolicyVersion) {
    this.#current = { policy: initial, users: 0, retired: false };
  }

  /** The version new requests get. */
  get version(): number {
    return this.#current.policy.version;
  }

  /** Runs `fn` with the current policy; a swap during `fn` does not free what it uses. */
  async use<T>(fn: (policy: PolicyVersion) => Promise<T>): Promise<T> {
    const held = this.#current;
    held.users++;
    try {
      return await fn(held.policy);
    } finally {
      held.users--;
      if (held.retired && held.users === 0) held.policy.model.dispose();
    }
  }

  /** Serves `next` from now on; the previous version is freed when its last request ends. */
  swap(next: PolicyVersion): void {
    const old = this.#current;
    this.#current = { policy: next, users: 0, retired: false };
    old.retired = true;
    if (old.users === 0) old.policy.model.dispose();
  }

  /** Frees the current version (shutdown). */
  dispose(): void {
    this.#current.retired = true;
    if (this.#current.users === 0) this.#current.policy.model.dispose();
  }
}

/** The prompt text a policy sees: the text as is, or messages through the chat template. */
export function renderPrompt(tokenizer: Tokenizer, prompt: string | ChatMessage[]): string {
  if (typeof prompt === "string") return prompt;
  if (!tokenizer.chatTemplate) {
    // Models without a template (base GPT-2) still get a readable transcript.
    return prompt.map((m) => `${m.role}: ${m.content}\n`).join("") + "assistant:";
  }
  return tokenizer.applyChatTemplate(prompt, { addGenerationPrompt: true });
}

/** Samples `n` responses to one prompt in one batch. */
export function sampleResponses(
  policy: PolicyVersion,
  promptText: string,
  n: number,
  options: GenerateOptions,
): Promise<Generation[]> {
  const ids = policy.tokenizer.encode(promptText);
  return generate(policy.model, policy.tokenizer, Array.from({ length: n }, () => ids), options);
}
