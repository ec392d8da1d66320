/**
 * What the ingest routes refuse before they generate or store anything: a prompt the served model
 * cannot train on (`promptFitProblem`, the rule the trainer applies), and a preference whose two
 * answers are the same text. Each problem is a 422 naming the field, so nothing the trainer would
 * stumble on gets in.
 */
import { promptFitProblem, renderPrompt } from "../dpo/fit.ts";
import type { ChatMessage } from "../model/io/messages.ts";
import type { ImportLabeledInput } from "../store/pairs.ts";
import { httpError } from "./http.ts";
import type { PolicyVersion } from "./policy.ts";

/** A preference as the API takes it: TRL's `{prompt, chosen, rejected}`, each text or messages. */
export interface PreferenceBody {
  prompt: string | ChatMessage[];
  chosen: string | ChatMessage[];
  rejected: string | ChatMessage[];
}

/** The text the policy sees for `prompt`, or why it cannot be trained on (or generated from) with `p`. */
export function fitPrompt(
  p: PolicyVersion,
  prompt: string | ChatMessage[],
): { promptText: string; problem?: undefined } | { promptText?: undefined; problem: string } {
  let promptText: string;
  try {
    promptText = renderPrompt(p.tokenizer, prompt);
  } catch (err) {
    return { problem: `the messages cannot be rendered with the model's chat template (${(err as Error).message})` };
  }
  const problem = promptFitProblem(p.tokenizer, promptText, p.model.contextLength);
  return problem === null ? { promptText } : { problem };
}

/** The text the policy sees for `prompt`; a 422 naming `field` when the model could not train on it. */
export function fittingPromptText(p: PolicyVersion, prompt: string | ChatMessage[], field: string): string {
  const fit = fitPrompt(p, prompt);
  if (fit.problem !== undefined) throw httpError(422, "invalid_request", `${field}: ${fit.problem}`);
  return fit.promptText;
}

/**
 * The store inputs of preferences, all checked before any is stored; one 422 lists every item's problems
 * (`body[2].prompt: …`). `where(i)` names item `i` in the request (`body` or `body[i]`). Without a served
 * model (`p` undefined) prompts are not checked against a context: the trainer retires what cannot fit.
 */
export function preferenceInputs(
  p: PolicyVersion | undefined,
  items: readonly PreferenceBody[],
  where: (i: number) => string,
): ImportLabeledInput[] {
  const problems: string[] = [];
  const inputs = items.map((item, i): ImportLabeledInput => {
    // Without a model (a feedback-only server) the prompt is kept as given; the trainer renders it.
    const fit = p ? fitPrompt(p, item.prompt) : { promptText: "", problem: undefined };
    if (fit.problem !== undefined) problems.push(`${where(i)}.prompt: ${fit.problem}`);
    const chosen = answerText(item.chosen);
    const rejected = answerText(item.rejected);
    // Answers that differ only in blanks state no preference: the pair would teach formatting, not content.
    if (chosen.trim() === rejected.trim()) {
      problems.push(
        `${where(i)}: 'chosen' and 'rejected' must differ, but they are the same text after trimming blanks`,
      );
    }
    const prompt = item.prompt;
    return {
      ...(typeof prompt === "string" ? { prompt } : { messages: prompt, promptText: fit.promptText ?? "" }),
      chosen,
      rejected,
    };
  });
  if (problems.length > 0) throw httpError(422, "invalid_request", problems.join("; "));
  return inputs;
}

/** An answer as the store keeps it: the text, or the messages' contents one after another. */
function answerText(x: string | ChatMessage[]): string {
  return typeof x === "string" ? x : x.map((m) => m.content).join("\n");
}
