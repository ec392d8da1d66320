/**
 * The one rule every ingest route and the trainer share for whether a prompt can be trained on: its
 * tokens, at least one response token and the end-of-sequence token fit in the model's context. The
 * server refuses what breaks it (4xx); the trainer gives a stored pair that breaks it (a model swap
 * shortened the context) the terminal status `rejected` instead of failing on it.
 */
import type { ChatMessage } from "../model/io/messages.ts";
import type { Tokenizer } from "../model/io/tokenizer.ts";

/** Why `promptText` cannot be trained on with this tokenizer and token budget, or `null` when it can. */
export function promptFitProblem(tokenizer: Tokenizer, promptText: string, maxLength: number): string | null {
  let tokens: number;
  try {
    tokens = Math.max(tokenizer.encode(promptText).length, 1); // an empty prompt is scored after one bos token
  } catch (err) {
    return `the prompt cannot be tokenized (${(err as Error).message})`;
  }
  if (tokens + 2 <= maxLength) return null;
  return `the prompt has ${tokens} tokens, but the model's context of ${maxLength} tokens must also hold ` +
    `at least one response token and the end-of-sequence token (at most ${maxLength - 2} prompt tokens)`;
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
