/**
 * The LLM judge's prompt and the parser of its answer. The contract with the model: reason briefly, then end
 * with one line `Verdict: A`, `Verdict: B` or `Verdict: TIE`. The parser is lenient about how models
 * actually write that line (case, markdown, "Response A", MT-Bench's `[[A]]`, trailing punctuation) and
 * takes the last verdict in the answer, so that a model changing its mind mid-answer is read correctly.
 */

import type { ChatMessage } from "../model/io/tokenizer.ts";
import type { Choice, Prompt } from "./types.ts";

/** The default system prompt of the LLM judge. */
export const JUDGE_SYSTEM_PROMPT =
  `You are an impartial judge comparing two responses, written by AI assistants, to the same prompt.
Decide which response better serves the user: judge correctness first, then helpfulness, relevance, completeness and clarity.
Do not let the order in which the responses are shown, their length, or their style influence you.
Explain your reasoning in a few sentences, then end your answer with exactly one final line, one of:
Verdict: A
Verdict: B
Verdict: TIE
Answer TIE only when the two responses are equally good or equally bad.`;

/** Renders the prompt as text: a string as is, a conversation as `Role: content` turns. */
export function renderPrompt(prompt: Prompt): string {
  if (typeof prompt === "string") return prompt;
  return prompt.map((m) => `${m.role.charAt(0).toUpperCase()}${m.role.slice(1)}: ${m.content}`).join("\n\n");
}

/** The chat messages that ask the judge to compare `first` (shown as A) with `second` (shown as B). */
export function buildJudgeMessages(
  prompt: Prompt,
  first: string,
  second: string,
  systemPrompt = JUDGE_SYSTEM_PROMPT,
): ChatMessage[] {
  const user = [
    "[Prompt]",
    renderPrompt(prompt),
    "[End of prompt]",
    "",
    "[Response A]",
    first,
    "[End of response A]",
    "",
    "[Response B]",
    second,
    "[End of response B]",
    "",
    'Which response is better? Reason briefly, then end with the final line "Verdict: A", "Verdict: B" or "Verdict: TIE".',
  ].join("\n");
  return [{ role: "system", content: systemPrompt }, { role: "user", content: user }];
}

const BRACKETED = /\[\[\s*(a|b|c|tie)\s*\]\]/gi;
const KEYWORD =
  /\b(?:final\s+verdict|verdict|final\s+answer|final\s+decision|decision|winner|better\s+response|preferred\s+response)\b\s*(?:is\s*)?[:=\-\u2013\u2014]?\s*(.*)$/i;
const TIE_WORD = /^(?:it\s*(?:'|\u2019)?s\s+|it\s+is\s+)?(?:an?\s+)?(?:tie|draw|equal|neither|both)\b/i;
const LETTER = /^(?:response|assistant|answer|output|option|model)?\s*(a|b)\b/i;
const BARE_LINE = /^(?:response|assistant|answer|output|option|model)?\s*(a|b|tie)$/i;

/**
 * Reads the verdict out of a judge's answer, as the position shown: "a" (first), "b" (second) or "tie";
 * undefined when there is none. `<think>` blocks of reasoning models are ignored.
 */
export function parseVerdict(text: string): Choice | undefined {
  const visible = text.replace(/<think>[\s\S]*?<\/think>/gi, "").replace(/<think>[\s\S]*$/i, "");
  const lines = visible.split(/\r?\n/).map(stripMarkdown);
  let found: Choice | undefined;
  for (const line of lines) found = parseLine(line) ?? found;
  if (found !== undefined) return found;
  // No "Verdict:" anywhere: accept a final line that is nothing but the choice ("B", "**Response A.**").
  const last = lines.findLast((line) => line.trim() !== "");
  const bare = last === undefined ? null : BARE_LINE.exec(last.trim().replace(/[.!?:;,"'\u201c\u201d]+$/, "").trim());
  return bare === null ? undefined : toChoice(bare[1]!);
}

function parseLine(line: string): Choice | undefined {
  let found: Choice | undefined;
  for (const match of line.matchAll(BRACKETED)) found = toChoice(match[1]!);
  if (found !== undefined) return found;
  const keyword = KEYWORD.exec(line);
  if (keyword === null) return undefined;
  const rest = keyword[1]!.replace(/^[\s"'\u201c\u201d\u2018\u2019[\](){}:]+/, "");
  if (TIE_WORD.test(rest)) return "tie";
  const letter = LETTER.exec(rest);
  return letter === null ? undefined : toChoice(letter[1]!);
}

function stripMarkdown(line: string): string {
  return line.replace(/[*_`#>~|]/g, "");
}

function toChoice(token: string): Choice {
  const t = token.toLowerCase();
  return t === "a" ? "a" : t === "b" ? "b" : "tie"; // "c" is MT-Bench's tie
}
