/**
 * Where the feeder's prompts come from: the built-in arithmetic task (its training split, never a
 * held-out problem) or a prompt file, one prompt per line, or, when the file ends in `.jsonl`, JSON
 * lines in TRL's prompt-only formats: `{"prompt": "..."}`, or a conversation
 * `{"prompt": [{"role": "user", "content": "..."}]}` that the server renders with the model's chat template.
 */
import { z } from "zod";
import { findTask } from "../tasks/registry.ts";
import type { Prompt } from "../judge/types.ts";
import { MessageSchema as Message } from "../model/io/messages.ts";

/** An endless source of prompts. */
export interface PromptSource {
  /** What the prompts are, for logs. */
  description: string;
  next(): Prompt;
}

const PromptLine = z.object({
  prompt: z.union([z.string().min(1, "must not be empty"), z.array(Message).min(1, "must not be empty")]),
});

/**
 * Reads a prompt file's text: JSON lines `{"prompt"}` (a string or messages) when `jsonl`, else one
 * prompt per line; blank lines are skipped.
 */
export function parsePromptFile(text: string, name: string, jsonl: boolean): Prompt[] {
  const prompts: Prompt[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === "") return;
    if (!jsonl) return void prompts.push(line);
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw new Error(`Cannot read prompt file '${name}' line ${i + 1}: not valid JSON`);
    }
    const parsed = PromptLine.safeParse(value);
    if (!parsed.success) {
      const problem = parsed.error.issues.map((p) => `'${p.path.join(".") || "line"}' ${p.message}`).join("; ");
      throw new Error(
        `Cannot read prompt file '${name}' line ${
          i + 1
        }: expected {"prompt": string or [{"role", "content"}]}: ${problem}`,
      );
    }
    prompts.push(parsed.data.prompt);
  });
  if (prompts.length === 0) throw new Error(`Cannot use prompt file '${name}' as it holds no prompt`);
  return prompts;
}

/** The prompts of a task: a registered task's name, or the path of a prompt file (cycled through from a random start). */
export async function loadPromptSource(task: string, seed: number): Promise<PromptSource> {
  const registered = findTask(task);
  if (registered) return { description: registered.description, next: registered.trainingPrompts(seed) };
  const text = await Deno.readTextFile(task).catch((err) => {
    throw new Error(`Cannot read prompt file '${task}': ${(err as Error).message}`);
  });
  const prompts = parsePromptFile(text, task, /\.(jsonl|ndjson)$/i.test(task));
  let i = seed % prompts.length;
  return {
    description: `${prompts.length} prompts from ${task}`,
    next: () => prompts[i++ % prompts.length]!,
  };
}
