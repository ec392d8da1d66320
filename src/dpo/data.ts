/**
 * Preference datasets in TRL's formats, read from JSONL: standard `{prompt, chosen, rejected}` strings,
 * or conversational messages (`{prompt, chosen, rejected}` as message lists, or `{chosen, rejected}`
 * sharing the prompt as their common leading messages), rendered with the model's chat template; a rendered
 * answer ends with the template's end-of-turn token (what the policy stops on), not with an added eos.
 * A malformed line is reported with its number and either stops the run or is skipped, never trained on.
 */
import { z } from "zod";
import type { ChatMessage, Tokenizer } from "../model/io/tokenizer.ts";
import type { KtoExample, PreferencePair } from "./trainer.ts";

const Message = z.object({ role: z.string(), content: z.string() });
const Messages = z.array(Message).min(1);

const Standard = z.object({ prompt: z.string(), chosen: z.string(), rejected: z.string() });
const ExplicitPrompt = z.object({ prompt: Messages, chosen: Messages, rejected: Messages });
const ImplicitPrompt = z.object({ chosen: Messages, rejected: Messages });

/** A line that could not be used, and why. */
export interface BadLine {
  line: number;
  problem: string;
}

/** Options of `readPreferences`. */
export interface ReadPreferencesOptions {
  /** `fail`: the first bad line is an error; `skip`: bad lines are returned in `bad` and left out. */
  onBadLine: "fail" | "skip";
  /** Longest prompt + completion + eos, in tokens. */
  maxLength: number;
}

/** Parses preference JSONL text into token-id pairs. */
export function readPreferences(
  text: string,
  tokenizer: Tokenizer,
  origin: string,
  options: ReadPreferencesOptions,
): { pairs: PreferencePair[]; bad: BadLine[] } {
  const { items, bad } = readLines(text, origin, options, (raw) => toPair(raw, tokenizer, options.maxLength));
  return { pairs: items, bad };
}

const KtoStandard = z.object({ prompt: z.string(), completion: z.string(), label: z.boolean() });
const KtoConversational = z.object({ prompt: Messages, completion: Messages, label: z.boolean() });

/** Parses KTO JSONL text (TRL's unpaired format `{prompt, completion, label}`) into token-id examples. */
export function readKtoExamples(
  text: string,
  tokenizer: Tokenizer,
  origin: string,
  options: ReadPreferencesOptions,
): { examples: KtoExample[]; bad: BadLine[] } {
  const { items, bad } = readLines(text, origin, options, (raw) => {
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (err) {
      throw new Error(`not valid JSON (${(err as Error).message})`);
    }
    const standard = KtoStandard.safeParse(value);
    const conversational = KtoConversational.safeParse(value);
    let texts: { prompt: string; completion: string; label: boolean };
    if (standard.success) texts = standard.data;
    else if (conversational.success) {
      const { prompt, completion, label } = conversational.data;
      const rendered = render(tokenizer, prompt, completion, completion);
      texts = { prompt: rendered.prompt, completion: rendered.chosen, label };
    } else {
      throw new Error(
        'expected {"prompt", "completion", "label": boolean} as strings or as lists of {"role", "content"} messages',
      );
    }
    const example: KtoExample = {
      promptIds: tokenizer.encode(texts.prompt),
      completionIds: tokenizer.encode(texts.completion),
      desirable: texts.label,
    };
    const answer = conversational.success ? beforeEndOfTurn(example.completionIds, tokenizer) : null;
    if (answer) Object.assign(example, { completionIds: answer, eosId: tokenizer.endOfTurnId });
    const length = Math.max(1, example.promptIds.length) + example.completionIds.length + 1;
    if (length > options.maxLength) {
      throw new Error(`prompt + completion + eos is ${length} tokens, more than max_length ${options.maxLength}`);
    }
    return example;
  });
  return { examples: items, bad };
}

/**
 * A rendered chat answer's ids up to its template's end-of-turn, or null without one. TRL scores a
 * conversational answer up to its end-of-turn, which becomes the terminator: what the template writes
 * after it (ChatML's "\n") is never generated, and an eos after it would be a second terminator.
 */
function beforeEndOfTurn(ids: number[], tokenizer: Tokenizer): number[] | null {
  const end = tokenizer.endOfTurnId;
  const at = end === undefined ? -1 : ids.lastIndexOf(end);
  return at >= 0 ? ids.slice(0, at) : null;
}

/** Parses every non-empty line with `parse`; a failure stops the run or is collected, per `onBadLine`. */
function readLines<T>(
  text: string,
  origin: string,
  options: ReadPreferencesOptions,
  parse: (raw: string) => T,
): { items: T[]; bad: BadLine[] } {
  const items: T[] = [];
  const bad: BadLine[] = [];
  text.split("\n").forEach((raw, i) => {
    if (raw.trim() === "") return;
    try {
      items.push(parse(raw));
    } catch (err) {
      const problem = (err as Error).message;
      if (options.onBadLine === "fail") {
        throw new Error(
          `Cannot read '${origin}' line ${i + 1}: ${problem} (use --on-bad-line skip to leave such lines out)`,
        );
      }
      bad.push({ line: i + 1, problem });
    }
  });
  return { items, bad };
}

function toPair(raw: string, tokenizer: Tokenizer, maxLength: number): PreferencePair {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch (err) {
    throw new Error(`not valid JSON (${(err as Error).message})`);
  }
  const texts = toTexts(value, tokenizer);
  const pair: PreferencePair = {
    promptIds: tokenizer.encode(texts.prompt),
    chosenIds: tokenizer.encode(texts.chosen),
    rejectedIds: tokenizer.encode(texts.rejected),
  };
  const chosen = texts.chat ? beforeEndOfTurn(pair.chosenIds, tokenizer) : null;
  const rejected = texts.chat ? beforeEndOfTurn(pair.rejectedIds, tokenizer) : null;
  if (chosen && rejected) {
    Object.assign(pair, { chosenIds: chosen, rejectedIds: rejected, eosId: tokenizer.endOfTurnId });
  }
  const longest = Math.max(1, pair.promptIds.length) + Math.max(pair.chosenIds.length, pair.rejectedIds.length) + 1;
  if (longest > maxLength) {
    throw new Error(`prompt + completion + eos is ${longest} tokens, more than max_length ${maxLength}`);
  }
  if (pair.chosenIds.join() === pair.rejectedIds.join()) throw new Error("chosen and rejected are the same");
  return pair;
}

function toTexts(
  value: unknown,
  tokenizer: Tokenizer,
): { prompt: string; chosen: string; rejected: string; chat: boolean } {
  const standard = Standard.safeParse(value);
  if (standard.success) return { ...standard.data, chat: false };
  const explicit = ExplicitPrompt.safeParse(value);
  if (explicit.success) return render(tokenizer, explicit.data.prompt, explicit.data.chosen, explicit.data.rejected);
  const implicit = ImplicitPrompt.safeParse(value);
  if (implicit.success) {
    const { chosen, rejected } = implicit.data;
    let shared = 0;
    while (shared < Math.min(chosen.length, rejected.length) - 1 && sameMessage(chosen[shared]!, rejected[shared]!)) {
      shared++;
    }
    if (shared === 0) throw new Error("conversational chosen and rejected share no leading prompt messages");
    return render(tokenizer, chosen.slice(0, shared), chosen.slice(shared), rejected.slice(shared));
  }
  throw new Error(
    'expected {"prompt", "chosen", "rejected"} as strings or as lists of {"role", "content"} messages, ' +
      'or {"chosen", "rejected"} message lists sharing their leading prompt messages',
  );
}

function sameMessage(a: ChatMessage, b: ChatMessage): boolean {
  return a.role === b.role && a.content === b.content;
}

/** Renders prompt and completions with the chat template; a completion is the text after the prompt's. */
function render(tokenizer: Tokenizer, prompt: ChatMessage[], chosen: ChatMessage[], rejected: ChatMessage[]) {
  const promptText = tokenizer.applyChatTemplate(prompt, { addGenerationPrompt: true });
  const completion = (messages: ChatMessage[]) => {
    const full = tokenizer.applyChatTemplate([...prompt, ...messages]);
    if (!full.startsWith(promptText)) {
      throw new Error("the chat template does not render the prompt as a prefix of the conversation");
    }
    return full.slice(promptText.length);
  };
  return { prompt: promptText, chosen: completion(chosen), rejected: completion(rejected), chat: true };
}
